"""What the checks measure on one pair (`Metrics`) and how a pair compares with a reference (`compare`).

`Metrics` is what evaluate/suite.py returns, what stage.json caches and what the report
rows and `optimize eval` read; `compare` holds the two formulas every caller shares:
the error-rate delta in absolute points and the speedup on the provider's basis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# What the speedup compares, per provider. On the CPU, the process's CPU seconds:
# with a fixed thread count they measure the graph's work, while the wall clock of a
# shared machine mostly measures the neighbours (seen here: wall RTF 12x the CPU RTF,
# a stage "0.88x" in wall-clock and 1.05x in CPU time). On CUDA the host waits for the
# device, so only the wall clock means anything.
SPEEDUP_BASIS = {"cpu": "cpu_rtf", "cuda": "rtf"}


@dataclass
class Metrics:
    """One evaluation of one pair; a field stays None when its check did not run (or does not apply)."""

    checks: list[str] = field(default_factory=list)  # the checks that passed, in order
    failures: list[str] = field(default_factory=list)  # "<check>: <reason>"; at most one, the evaluation stops there
    load: dict | None = None  # {"frames": [...], "encoder_frames": [...]} of the load-and-run check
    parity: dict | None = None  # {"vs_baseline"|"vs_input": parity.Parity as a dict}
    token_agreement: float | None = None  # fraction of utterances (probes in parity_only) equal to the baseline's
    error_rate: float | None = None  # mixed CER/WER in %, None in parity_only
    error_rates: dict[str, float] | None = None  # per language and "mixed", in %
    error_rate_vs_baseline: float | None = None  # the same rate with the baseline's hypotheses as references
    error_counts: dict | None = None  # substitutions, deletions, insertions, ref_len of the mixed rate
    hyps: list[dict] | None = None  # [{"id": ..., "tokens": [...], "text": ...}] per utterance, in manifest order
    rtf: dict | None = None  # rtf.Rtf as a dict
    io_binding: bool | None = None  # whether the timed decode ran through IOBinding (what ran, not what was asked)
    # where the eval set was decoded (runtime/executor.py): executor, workers, shards, audio and
    # wall seconds of the whole decode, audio_seconds_per_wall_second
    throughput: dict | None = None
    ops: dict | None = None  # role -> op type -> count
    op_stats: dict | None = None  # "fused", tracked op totals and "nodes" over both graphs
    size_mb: float | None = None  # both graphs with their external data, 1e6 bytes
    eval_peak_rss_mb: float | None = None  # peak RSS of the process that evaluated (None in process)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Metrics:
        return cls(**data)


@dataclass(frozen=True)
class Comparison:
    """A pair against its reference (the run's fp32 baseline, or `optimize eval --reference`)."""

    delta_error_rate: float | None  # error-rate points over the reference; None without both rates
    speedup: float  # reference RTF / pair RTF on SPEEDUP_BASIS[provider]
    basis: str  # the Rtf field compared: "cpu_rtf" or "rtf"


def compare(metrics: Metrics, reference: Metrics, provider: str) -> Comparison:
    """The error-rate delta and the speedup of `metrics` over `reference` (both passed every check)."""
    er, base_er = metrics.error_rate, reference.error_rate
    basis = SPEEDUP_BASIS[provider]
    speedup = reference.rtf[basis] / max(metrics.rtf[basis], 1e-12)
    return Comparison(None if er is None or base_er is None else er - base_er, speedup, basis)
