"""FireRedASR's front end: 80-bin Kaldi fbank on int16-scale samples, then global CMVN.

Matches fireredasr/data/asr_feat.py: kaldi-native-fbank with dither 0,
snip_edges, povey window and every other option at its knf default; CMVN in
float64 from Kaldi stats, then cast to float32.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

from optimize.errors import OptimizeError

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80


def _fbank_options() -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.debug_mel = False
    return opts


def fbank(samples: np.ndarray) -> np.ndarray:
    """Log-mel filterbank of 16 kHz audio.

    samples: shape = (num_samples,), float, int16 scale (about +-32768).
    returns: shape = (1 + (num_samples - 400) // 160, 80), float32; (0, 80) if too short.
    """
    computer = knf.OnlineFbank(_fbank_options())
    computer.accept_waveform(SAMPLE_RATE, np.asarray(samples, dtype=np.float32))
    computer.input_finished()
    n = computer.num_frames_ready
    if n == 0:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
    return np.stack([computer.get_frame(i) for i in range(n)]).astype(np.float32)


def apply_cmvn(feats: np.ndarray, mean: np.ndarray, inv_stddev: np.ndarray) -> np.ndarray:
    """(x - mean) * inv_stddev in float64, as FireRedASR does; returns float32, same shape."""
    out = (feats.astype(np.float64) - np.asarray(mean, dtype=np.float64)) * np.asarray(inv_stddev, dtype=np.float64)
    return out.astype(np.float32)


def cmvn_from_stats(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaldi global CMVN stats, shape = (2, D+1), to (mean, inv_stddev), each shape = (D,), float64.

    Row 0 holds per-dim sums with the frame count last; row 1 the sums of squares.
    Variance is floored at 1e-20 (fireredasr/data/asr_feat.py).
    """
    dim = stats.shape[1] - 1
    count = float(stats[0, dim])
    if count < 1:
        raise OptimizeError("CMVN stats have a frame count below 1", "recompute cmvn.ark from training features")
    mean = stats[0, :dim] / count
    var = np.maximum(stats[1, :dim] / count - mean * mean, 1e-20)
    return mean, 1.0 / np.sqrt(var)


def read_kaldi_cmvn(path: Path) -> np.ndarray:
    """Read a Kaldi binary matrix (`\\0B` + `FM `/`DM `) such as cmvn.ark; returns float64 (rows, cols).

    Accepts both `key \\0BFM ...` archive entries and bare matrices.
    """
    data = Path(path).read_bytes()
    start = data.find(b"\0B")
    if start < 0:
        raise OptimizeError(f"{path} is not a Kaldi binary matrix", "write cmvn.ark with Kaldi's binary format")
    pos = start + 2
    kind = data[pos : pos + 3]
    if kind not in (b"FM ", b"DM "):
        raise OptimizeError(f"{path} holds {kind!r}, not a float/double matrix", "write cmvn.ark as a Kaldi FM/DM matrix")
    pos += 3
    rows, cols = (struct.unpack("<i", data[p + 1 : p + 5])[0] for p in (pos, pos + 5))
    pos += 10
    dtype = np.float32 if kind == b"FM " else np.float64
    count = rows * cols
    if len(data) < pos + count * np.dtype(dtype).itemsize:
        raise OptimizeError(f"{path} is truncated", "recompute cmvn.ark")
    return np.frombuffer(data, dtype=dtype, count=count, offset=pos).reshape(rows, cols).astype(np.float64)


def write_kaldi_cmvn(path: Path, stats: np.ndarray) -> None:
    """Write stats, shape = (2, D+1), as a bare Kaldi binary double matrix.

    Bare (no archive key), because FireRedASR reads cmvn.ark with kaldiio.load_mat.
    """
    rows, cols = stats.shape
    header = b"\0BDM " + b"\x04" + struct.pack("<i", rows) + b"\x04" + struct.pack("<i", cols)
    Path(path).write_bytes(header + np.ascontiguousarray(stats, dtype="<f8").tobytes())


def cmvn_stats(feats_list: list[np.ndarray]) -> np.ndarray:
    """Accumulate Kaldi CMVN stats, shape = (2, D+1), float64, over feature matrices (T, D)."""
    dim = feats_list[0].shape[1]
    stats = np.zeros((2, dim + 1), dtype=np.float64)
    for f in feats_list:
        f = f.astype(np.float64)
        stats[0, :dim] += f.sum(0)
        stats[1, :dim] += (f * f).sum(0)
        stats[0, dim] += f.shape[0]
    return stats


def frames_for(num_samples: int) -> int:
    """Number of fbank frames for `num_samples` at 16 kHz with snip_edges (25 ms / 10 ms)."""
    return 0 if num_samples < 400 else 1 + (num_samples - 400) // 160


assert math.isclose(frames_for(16000), 98)
