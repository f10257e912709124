"""Run reports: report.json (everything), report.md (one table, a row per stage), report.png.

Rewritten after every stage, each file atomically, so a stopped run still shows how
far it got and why it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from optimize import atomic, cache
from optimize.evaluate.metrics import Comparison, Metrics
from optimize.errors import OptimizeError

JSON, MARKDOWN, PLOT = "report.json", "report.md", "report.png"
FINAL = "final"  # the published pair's directory inside the run directory


@dataclass(frozen=True)
class Row:
    """One stage of a run as report.json records it (every field) and report.md shows it (COLUMNS)."""

    name: str  # the recipe word ("baseline" for the imported fp32 pair)
    path: str  # the stage directory
    passed: bool
    failures: list[str]  # "<check>: <reason>" or "gate: ..." or "stage: ..."
    error_rate: float | None = None  # mixed error rate in %
    delta_error_rate: float | None = None  # points over the baseline
    error_rate_vs_baseline: float | None = None  # with the baseline's hypotheses as references
    token_agreement: float | None = None  # fraction equal to the baseline's tokens
    rtf: float | None = None  # wall-clock RTF of the timed pass
    rtf_p50: float | None = None
    rtf_p90: float | None = None
    rtf_cpu: float | None = None  # CPU-seconds RTF
    speedup: float | None = None  # baseline RTF / stage RTF on the provider's basis
    size_mb: float | None = None
    peak_rss_mb: float | None = None  # the stage's own process
    eval_peak_rss_mb: float | None = None  # the evaluation's own process
    seconds: float | None = None  # the stage's transform time
    cached: bool | None = None  # the stage's output came from the cache
    notes: list[str] = field(default_factory=list)  # what the stage says about itself
    changes: dict | None = None  # the stage's details (resolved options, excluded nodes)
    op_stats: dict | None = None
    parity: dict | None = None
    outputs: dict | None = None  # file name -> sha256
    error_counts: dict | None = None  # substitutions, deletions, insertions, ref_len of the mixed rate
    breakdown: list[dict] | None = None  # error rates by manifest field (evaluate/breakdown.py)
    changed: list[dict] | None = None  # utterances whose text differs from the baseline's: id, reference, both texts

    @classmethod
    def of(cls, name: str, path: Path, record: dict, metrics: Metrics, judged: Comparison | None, failures: list[str]) -> Row:
        """The row of a stage that ran: its stage.json record, its metrics and the gates' comparison."""
        rtf = metrics.rtf or {}
        return cls(
            name=name, path=str(path), passed=not failures, failures=failures,
            error_rate=metrics.error_rate, delta_error_rate=None if judged is None else judged.delta_error_rate,
            error_rate_vs_baseline=metrics.error_rate_vs_baseline, token_agreement=metrics.token_agreement,
            rtf=rtf.get("rtf"), rtf_p50=rtf.get("p50"), rtf_p90=rtf.get("p90"), rtf_cpu=rtf.get("cpu_rtf"),
            speedup=None if judged is None else judged.speedup, size_mb=metrics.size_mb, peak_rss_mb=record.get("peak_rss_mb"),
            eval_peak_rss_mb=metrics.eval_peak_rss_mb, seconds=record.get("seconds"), cached=record["cached"],
            notes=record["output"].get("notes", []), changes=record["output"].get("details"), op_stats=metrics.op_stats,
            parity=metrics.parity, outputs=record["outputs"], error_counts=metrics.error_counts,
        )  # fmt: skip


def header(recipe, resolved: dict, provider: str, representative: bool, timed: str, speedup_basis: str) -> dict:
    """The run-level part of report.json."""
    return {
        "recipe": recipe.name,
        "run_dir": str(recipe.output),
        "model": str(recipe.model),
        "data": None if recipe.data is None else str(recipe.data),
        "provider": provider,
        "target_provider": recipe.provider,
        "rtf_representative": representative,
        "rtf_timed": timed,
        "speedup_basis": speedup_basis,
        "threads": recipe.threads,
        "evaluation": recipe.evaluation.mode,
        "gates": resolved["gates"],
        "resolved_recipe": resolved,
        "versions": cache.tool_versions(),
        "host": cache.host(),
    }


def write(run_dir: Path, head: dict, rows: list[Row], final: Path | None) -> dict:
    """Write the three report files; returns the report (its "stages" are the Rows)."""
    run_dir = Path(run_dir)
    passed = final is not None and all(r.passed for r in rows)
    data = head | {"stages": rows, "passed": passed, "final": None if final is None else str(final)}
    earlier = run_dir / FINAL
    if final is None and earlier.is_dir():  # this run published nothing; say whose pair final/ holds
        data["earlier_final"] = {"path": str(earlier), "outputs": _digests_or_none(earlier)}
    as_json = data | {"stages": [dataclasses.asdict(r) for r in rows]}
    atomic.write_bytes(run_dir / JSON, json.dumps(as_json, indent=2, default=str).encode())
    atomic.write_bytes(run_dir / MARKDOWN, markdown(data).encode())
    plot(data, run_dir / PLOT)
    return data


def _digests_or_none(model_dir: Path) -> dict | None:
    try:
        return cache.digests(model_dir)
    except (OSError, OptimizeError):
        return None


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _op(name: str) -> Callable[[Row], str]:
    return lambda r: _num((r.op_stats or {}).get(name), "d")


# The stage table: (header, cell of a Row). A new column is one Row field and one entry here.
COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("stage", lambda r: r.name),
    ("error rate %", lambda r: _num(r.error_rate, ".2f")),
    ("Δ points", lambda r: _num(r.delta_error_rate, "+.2f")),
    ("agreement", lambda r: _num(r.token_agreement, ".3f")),
    ("RTF", lambda r: _num(r.rtf, ".4f")),
    ("p50", lambda r: _num(r.rtf_p50, ".4f")),
    ("p90", lambda r: _num(r.rtf_p90, ".4f")),
    ("CPU RTF", lambda r: _num(r.rtf_cpu, ".4f")),
    ("S/D/I", lambda r: "n/a" if not r.error_counts else "{substitutions}/{deletions}/{insertions}".format(**r.error_counts)),
    ("speedup", lambda r: _num(r.speedup, ".2f")),
    ("MB", lambda r: _num(r.size_mb, ".2f")),
    ("stage peak MB", lambda r: _num(r.peak_rss_mb, ".0f")),
    ("eval peak MB", lambda r: _num(r.eval_peak_rss_mb, ".0f")),
    ("fused", _op("fused")),
    ("Casts", _op("Cast")),
    ("MatMulInteger", _op("MatMulInteger")),
    ("passed", lambda r: "yes" if r.passed else "NO"),
)
HEADERS = tuple(h for h, _ in COLUMNS)
# The terminal's table (cli.py): what the gates judge, narrow enough for 100 columns.
TERMINAL = ("stage", "error rate %", "Δ points", "agreement", "S/D/I", "CPU RTF", "speedup", "MB", "passed")
CHANGED_SHOWN = 20  # changed utterances listed per stage in report.md (report.json has all)


def table_rows(report: dict, headers: tuple[str, ...] = HEADERS) -> list[list[str]]:
    """The stage table as strings, one list per stage, in the order of `headers` (report.md and the CLI print it)."""
    cells = dict(COLUMNS)
    return [[cells[h](r) for h in headers] for r in report["stages"]]


def _breakdown_lines(rows: list) -> list[str]:
    """Mixed error rate per manifest field value, one column per stage."""
    done = [r for r in rows if r.breakdown]
    if not done:
        return []
    lines = ["", "## Error rate by field (mixed %, S/D/I of the last stage)", "",
             "| field | value | utts | " + " | ".join(r.name for r in done) + " | S/D/I |", "|---|---|---:|" + "---:|" * (len(done) + 1)]  # fmt: skip
    for k, b in enumerate(done[0].breakdown):
        rates = [f"{r.breakdown[k]['rates']['mixed']:.2f}" for r in done]
        last = done[-1].breakdown[k]
        lines.append(f"| {b['field']} | {b['value']} | {b['utts']} | " + " | ".join(rates) + f" | {last['substitutions']}/{last['deletions']}/{last['insertions']} |")
    return lines


def _changed_lines(rows: list) -> list[str]:
    """Per stage, the utterances whose text differs from the baseline's."""
    lines = []
    for r in rows:
        if r.changed is None:
            continue
        lines += ["", f"### {r.name}: {len(r.changed)} utterance(s) changed against the baseline"]
        if r.changed:
            lines += ["", f"| id | reference | baseline | {r.name} |", "|---|---|---|---|"]
            lines += [f"| {c['id']} | {c['reference']} | {c['baseline']} | {c['hypothesis']} |" for c in r.changed[:CHANGED_SHOWN]]
            if len(r.changed) > CHANGED_SHOWN:
                lines.append(f"\n({len(r.changed) - CHANGED_SHOWN} more in report.json)")
    return (["", "## Changed utterances"] + lines) if lines else []


def markdown(report: dict) -> str:
    """report.md: a short header, the stage table, then notes and failures."""
    lines = [
        f"# {report['recipe']}: {'passed' if report['passed'] else 'not passed'}",
        "",
        f"model `{report['model']}`, data `{report['data']}`, provider {report['provider']} "
        f"(recipe targets {report['target_provider']}), {report['threads']} thread(s), evaluation {report['evaluation']}.",
        f"RTF: {report['rtf_timed']}; CPU RTF counts this process's CPU seconds instead of wall-clock; "
        f"speedup compares {'CPU RTF' if report['speedup_basis'] == 'cpu_rtf' else 'RTF'} with the baseline's."
        + ("" if report["rtf_representative"] else " **Not representative: not run on the target provider.**"),
        f"Gates: {', '.join(f'{k} {v}' for k, v in report['gates'].items())}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    for r in report["stages"]:
        lines += [f"- {r.name}: {note}" for note in r.notes]
        lines += [f"- **{r.name} failed** {failure}" for failure in r.failures]
    if report["final"]:
        lines.append(f"\nPublished: `{report['final']}`")
    elif report.get("earlier_final"):
        lines.append(f"\nNothing published by this run: `{report['earlier_final']['path']}` holds the pair an earlier passing run published.")
    lines += _breakdown_lines(report["stages"]) + _changed_lines(report["stages"])
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Error rate (or, without one, token agreement) and the RTF the speedup gate judges (CPU RTF on the
    CPU provider, wall-clock on CUDA; report["speedup_basis"]) by stage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["stages"]
    names = [r.name for r in rows]
    has_er = any(r.error_rate is not None for r in rows)
    left = [r.error_rate if has_er else r.token_agreement for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.bar(names, [v or 0 for v in left], color="tab:blue")
    ax1.set_title("error rate (%)" if has_er else "token agreement with baseline")
    cpu = report["speedup_basis"] == "cpu_rtf"
    ax2.bar(names, [(r.rtf_cpu if cpu else r.rtf) or 0 for r in rows], color=["tab:green" if r.passed else "tab:red" for r in rows])
    ax2.set_title(("CPU RTF (what min_speedup judges)" if cpu else "RTF (what min_speedup judges)") + ("" if report["rtf_representative"] else ", not representative"))
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"{report['recipe']} ({report['provider']})")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
