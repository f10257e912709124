"""`optimize bench`: time one pair's encoder and decoder steps at a chosen shape, through the shipped path.

The clock covers what the recognizer runs: `inference.encode` on an (N, T, 80) batch, then
`steps` decoder steps of N x beam rows through `inference.open_decoder` (the numpy path, or
IOBinding when asked or on CUDA), eos suppressed so every run decodes the same number of steps.
Random CMVN-normalized features (about N(0, 1)) stand in for audio: the cost of the graphs
depends on the shapes, not on the values. Medians over `repeats` timed runs after `warmup`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from optimize.errors import OptimizeError

FRAME_SECONDS = 0.01  # fbank frame shift: RTF counts 10 ms of audio per frame


@dataclass(frozen=True)
class BenchConfig:
    frames: int = 1000  # input length in 10 ms fbank frames (1000 = 10 s)
    steps: int = 32  # decoder steps per run (eos suppressed: random-weight models never stop)
    batch: int = 1  # utterances per run (N)
    beam: int = 1  # rows per utterance in the decoder (N x beam rows)
    provider: str = "cpu"
    threads: int = 2  # ORT intra-op threads
    io_binding: bool = False  # decode through IOBinding on the CPU provider too (CUDA always does)
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
    decoder_ms_per_step: float  # median decoder time of one run / steps run
    total_ms: float  # median encoder + decoder time of one run
    rtf: float  # total / audio seconds of the batch (batch x frames x 10 ms)
    steps: int  # decoder steps run (a fixed self-cache caps them)
    rows: int  # decoder rows (batch x beam)
    io_binding: bool  # whether the IOBinding path ran


def bench(model_dir: Path, cfg: BenchConfig | None = None) -> BenchResult:
    """Time `model_dir` at cfg's shape (default: BenchConfig()); see the module docstring for what the clock covers."""
    # onnxruntime is imported here, not with BenchConfig: the CLI reads BenchConfig's defaults for --help
    import numpy as np

    from optimize.runtime.binding import BoundPair
    from optimize.runtime.features import NUM_MEL_BINS
    from optimize.runtime.inference import SuppressEos, encode, forced_steps, open_decoder
    from optimize.runtime.providers import ProviderOptions
    from optimize.runtime.session import OrtPair

    cfg = cfg or BenchConfig()
    options = ProviderOptions(io_binding=cfg.io_binding)
    pair = OrtPair(model_dir, cfg.provider, cfg.threads, options)
    if cfg.batch > 1 and not pair.has_cross_mask:
        raise OptimizeError(f"{model_dir} has no batch dim / cross_attn_mask input for batch {cfg.batch}", "bench it with --batch 1")
    bound = BoundPair(pair) if options.binds(cfg.provider) else None
    info = pair.info
    steps = min(cfg.steps, pair.fixed_cache_len or cfg.steps)
    x = np.random.default_rng(0).standard_normal((cfg.batch, cfg.frames, NUM_MEL_BINS)).astype(np.float32)
    frames = np.full(cfg.batch, cfg.frames, dtype=np.int64)
    suppress = SuppressEos(info.eos)

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        enc = encode(pair, bound, x, frames)
        encoded = time.perf_counter()
        forced_steps(open_decoder(pair, bound, enc, None, pair.fixed_cache_len or steps + 1), cfg.batch, cfg.beam, info.sos, steps, suppress)
        return encoded - start, time.perf_counter() - encoded

    for _ in range(cfg.warmup):
        once()
    runs = [once() for _ in range(cfg.repeats)]
    enc_s = statistics.median(r[0] for r in runs)
    dec_s = statistics.median(r[1] for r in runs)
    total_s = statistics.median(r[0] + r[1] for r in runs)
    return BenchResult(str(model_dir), enc_s * 1e3, dec_s * 1e3 / steps, total_s * 1e3, total_s / (cfg.batch * cfg.frames * FRAME_SECONDS),
                       steps, cfg.batch * cfg.beam, bound is not None)  # fmt: skip
