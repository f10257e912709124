"""Real-time factor: processing seconds over audio seconds, with what the clock covers stated.

RTF = sum of timed processing seconds / sum of audio seconds over every timed item,
after untimed warm-up items (session arenas grow and kernels get picked on first use:
ort-toolchain.md §6). Per-item RTFs give the p50/p90. An item is one call of the
timed function: one utterance at batch size 1, one batch otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Rtf:
    rtf: float  # sum(processing s) / sum(audio s) over the timed items
    p50: float  # median per-item RTF
    p90: float  # 90th percentile per-item RTF
    processing_seconds: float  # sum of timed wall-clock seconds
    cpu_rtf: float  # the same ratio with this process's CPU seconds (all its threads): less
    # sensitive than wall-clock to other processes on a shared machine; meaningless on GPU
    audio_seconds: float  # sum of audio seconds of the timed items
    items: int  # timed calls
    warmup: int  # untimed calls before timing
    timed: str  # what the clock covers, in words


def measure(
    fn: Callable[[T], R],
    items: Sequence[T],
    seconds: Sequence[float],
    warmup: Sequence[T],
    timed: str,
    progress: Callable[[int], object] = lambda n: None,
) -> tuple[list[R], Rtf]:
    """Call `fn` on each warm-up item untimed, then on each item under a wall clock.

    seconds[i] is the audio duration of items[i]. Returns fn's results in item order.
    """
    for item in warmup:
        fn(item)
    results, spent = [], []
    cpu_start = time.process_time()
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        spent.append(time.perf_counter() - start)
        progress(1)
    cpu = time.process_time() - cpu_start
    return results, summarize(spent, seconds, cpu, len(warmup), timed)


def summarize(spent: Sequence[float], seconds: Sequence[float], cpu: float, warmup: int, timed: str) -> Rtf:
    """The Rtf of timed items: spent[i] wall-clock seconds on an item of seconds[i] audio seconds, `cpu` CPU seconds in all."""
    per_item = np.array(spent, dtype=np.float64) / np.maximum(np.array(seconds, dtype=np.float64), 1e-9)
    total_audio = float(np.sum(seconds))
    return Rtf(
        rtf=float(np.sum(spent) / max(total_audio, 1e-9)),
        p50=float(np.percentile(per_item, 50)) if len(per_item) else float("nan"),
        p90=float(np.percentile(per_item, 90)) if len(per_item) else float("nan"),
        processing_seconds=float(np.sum(spent)),
        cpu_rtf=cpu / max(total_audio, 1e-9),
        audio_seconds=total_audio,
        items=len(spent),
        warmup=warmup,
        timed=timed,
    )
