"""`optimize bench`: time one pair's encoder and decoder steps at a chosen shape, through the shipped path.

Each run clocks two phases of what the recognizer runs: `inference.encode` on an (N, T, 80)
batch, then the recognizer's own search (`search.search_scored`: greedy at beam 1, the beam
search with its top-k and cache reorders above) over the decoder `inference.open_decoder`
binds (the numpy path, or IOBinding when asked or on CUDA), eos suppressed so that every run
decodes exactly `steps` steps of N x beam rows. Random CMVN-normalized features (N(0, 1))
stand in for audio: the cost of the graphs depends on the shapes, not on the values. Medians
over `repeats` timed runs after `warmup`. benchmarks/cpu_benchmark.py times our pairs with
this same code (`Bench`), so the two report one number for one pair and setting.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from optimize.errors import OptimizeError

# A context-manager factory entered around a load or a block of timed runs (cpu_benchmark: PeakRss.paused)
Quiet = Callable[[], AbstractContextManager]

FRAME_SECONDS = 0.01  # fbank frame shift: RTF counts 10 ms of audio per frame


@dataclass(frozen=True)
class BenchConfig:
    frames: int = 1000  # input length in 10 ms fbank frames (1000 = 10 s)
    steps: int = 32  # decoder steps per run (eos suppressed: random-weight models never stop)
    batch: int = 1  # utterances per run (N)
    beam: int = 1  # beam size: rows per utterance in the decoder (N x beam rows)
    provider: str = "cpu"
    threads: int = 2  # ORT intra-op threads
    io_binding: bool = False  # decode through IOBinding on the CPU provider too (CUDA always does)
    spinning: bool | None = None  # ORT intra-op spinning; None = the runtime's default (ProviderOptions)
    rewrite_decoder: bool = True  # run the decoder as runtime/decoder_graph.py rewrites it (the runtime's default); False = as published
    warmup: int = 1  # untimed runs first
    repeats: int = 5  # timed runs; medians are reported

    def __post_init__(self):
        from optimize.runtime.audio import MAX_FRAMES  # lazy: the CLI builds a BenchConfig for --help

        if not 8 <= self.frames <= MAX_FRAMES or min(self.steps, self.batch, self.beam, self.repeats) < 1 or self.warmup < 0 or self.threads < 0:
            raise OptimizeError(
                f"bench frames={self.frames} steps={self.steps} batch={self.batch} beam={self.beam} repeats={self.repeats} warmup={self.warmup}",
                f"use 8 <= frames <= {MAX_FRAMES}, steps, batch, beam, repeats >= 1, warmup >= 0",
            )


@dataclass(frozen=True)
class BenchResult:
    pair: str
    encoder_ms: float  # median encoder time of one run
    decoder_ms_per_step: float  # median search time of one run / steps
    total_ms: float  # median encoder + search time of one run
    rtf: float  # total / audio seconds of the batch (batch x frames x 10 ms)
    steps: int  # decoder steps run (a fixed self-cache caps them)
    rows: int  # decoder rows (batch x beam)
    io_binding: bool  # whether the IOBinding path ran
    runs_ms: tuple[tuple[float, float], ...] = ()  # (encoder, search) ms of each timed run


class Bench:
    """One pair opened for timing with cfg's provider, threads and options; `measure` at any shape.

    `profile`: a path prefix; both sessions then record ORT's profile (cpu_benchmark's per-op tables).
    `quiet`: a context manager factory entered around each block of timed runs (not the warm-up):
    cpu_benchmark pauses its memory sampler there (PeakRss.paused).
    """

    def __init__(self, model_dir: str | Path, cfg: BenchConfig | None = None, profile: str | Path | None = None,
                 quiet: Quiet = nullcontext):  # fmt: skip
        # onnxruntime is imported here, not with BenchConfig: the CLI reads BenchConfig's defaults for --help
        from optimize.runtime.binding import BoundPair
        from optimize.runtime.providers import ProviderOptions
        from optimize.runtime.session import OrtPair

        self.model_dir = str(model_dir)
        self.cfg = cfg or BenchConfig()
        self.quiet = quiet
        spinning = {} if self.cfg.spinning is None else {"intra_op_spinning": self.cfg.spinning}
        options = ProviderOptions(io_binding=self.cfg.io_binding, rewrite_decoder=self.cfg.rewrite_decoder, **spinning)
        self.pair = OrtPair(model_dir, self.cfg.provider, self.cfg.threads, options, profile)
        self.bound = BoundPair(self.pair) if options.binds(self.cfg.provider) else None

    def shape(self, **changes) -> BenchConfig:
        """cfg with other frames / steps / batch / beam (not session settings: those the open pair has)."""
        if set(changes) - {"frames", "steps", "batch", "beam", "warmup", "repeats"}:
            raise ValueError(f"Bench.shape cannot change {sorted(changes)}: open another Bench")
        cfg = dataclasses.replace(self.cfg, **{k: v for k, v in changes.items() if v is not None})
        pair = self.pair
        if cfg.batch > 1 and not (pair.has_cross_mask and pair.max_encoder_rows is None):
            raise OptimizeError(f"{self.model_dir} has no batch dim / cross_attn_mask input for batch {cfg.batch}", "bench it with --batch 1")
        return cfg

    def run(self, cfg: BenchConfig | None = None) -> tuple[float, float, int]:
        """One run at cfg's shape (default: the Bench's): (encoder seconds, search seconds, steps run)."""
        import numpy as np

        from optimize.runtime.features import NUM_MEL_BINS
        from optimize.runtime.inference import Filtered, SuppressEos, encode, open_decoder
        from optimize.runtime.search import DecodeConfig, search_scored

        cfg = cfg or self.cfg
        pair, info = self.pair, self.pair.info
        steps = min(cfg.steps, pair.fixed_cache_len or cfg.steps)
        x = np.random.default_rng(0).standard_normal((cfg.batch, cfg.frames, NUM_MEL_BINS)).astype(np.float32)
        frames = np.full(cfg.batch, cfg.frames, dtype=np.int64)
        decode = DecodeConfig(beam_size=cfg.beam, batch_size=cfg.batch, max_len=steps)
        start = time.perf_counter()
        enc = encode(pair, self.bound, x, frames)
        encoded = time.perf_counter()
        model = Filtered(open_decoder(pair, self.bound, enc, None, pair.fixed_cache_len or steps + 1), SuppressEos(info.eos))
        search_scored(model, cfg.batch, steps, decode, info.sos, info.eos)
        return encoded - start, time.perf_counter() - encoded, steps

    def measure(self, **shape) -> BenchResult:
        """Medians over cfg.repeats runs after cfg.warmup, at the Bench's shape with `shape`'s changes."""
        cfg = self.shape(**shape)
        for _ in range(cfg.warmup):
            self.run(cfg)
        with self.quiet():
            runs = [self.run(cfg) for _ in range(cfg.repeats)]
        steps = runs[0][2]
        enc_s = statistics.median(r[0] for r in runs)
        dec_s = statistics.median(r[1] for r in runs)
        total_s = statistics.median(r[0] + r[1] for r in runs)
        return BenchResult(self.model_dir, enc_s * 1e3, dec_s * 1e3 / steps, total_s * 1e3, total_s / (cfg.batch * cfg.frames * FRAME_SECONDS),
                           steps, cfg.batch * cfg.beam, self.bound is not None, tuple((1e3 * e, 1e3 * d) for e, d, _ in runs))  # fmt: skip


def bench(model_dir: Path, cfg: BenchConfig | None = None) -> BenchResult:
    """Time `model_dir` at cfg's shape (default: BenchConfig()); see the module docstring for what the clock covers."""
    return Bench(model_dir, cfg).measure()


def profile_by_op(trace: Path, skip_calls: int) -> dict:
    """Kernel time by op type from an ORT profile (`Bench(..., profile=)`), leaving out the first
    `skip_calls` session runs (the warm-up).

    returns: trace, ms_per_call (kernel ms per counted run), model_run_ms (median wall ms of a
    counted run) and by_op ([{op, ms_per_call, share}], largest first).
    """
    events = json.loads(Path(trace).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    if len(runs) <= skip_calls:
        raise OptimizeError(f"{trace}: {len(runs)} model_run events, expected more than {skip_calls}", "profile more runs than the warm-up")
    start, calls = runs[skip_calls], len(runs) - skip_calls
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3
    total = sum(by_op.values())
    wall = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run" and e["ts"] >= start]
    return {"trace": str(trace), "ms_per_call": total / calls, "model_run_ms": statistics.median(wall),
            "by_op": [{"op": op, "ms_per_call": ms / calls, "share": ms / total} for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])]}  # fmt: skip
