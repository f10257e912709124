"""Read audio files as FireRedASR expects them: 16 kHz mono float32 at int16 scale.

FireRedASR reads 16-bit PCM with kaldiio and feeds the raw int16 values to
fbank. soundfile returns integer PCM divided by 2**(bits-1), so multiplying by
32768 gives back the exact int16 values (and int16-scale values for 24/32-bit
PCM); float files in [-1, 1] get the same factor (fireredasr runtime/model.py
does `wav * (1 << 15)`).
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from optimize.errors import OptimizeError
from optimize.runtime.features import SAMPLE_RATE, frames_for

INT16_SCALE = 32768.0
MIN_SAMPLES = 400  # one 25 ms fbank frame at 16 kHz (snip_edges)
# The encoder's relative positional encoding has 2*5000-1 rows, so the
# subsampled length T' must stay <= 5000 (fireredasr conformer_encoder.py).
MAX_ENCODER_LEN = 5000


def encoder_length(frames: int) -> int:
    """T' after the encoder's 6-frame pad and two kernel-3 stride-2 convs."""
    return ((frames + 6 - 3) // 2 + 1 - 3) // 2 + 1


# Largest fbank frame count the encoder accepts, and the sample count that
# yields it (frames_for(n) = 1 + (n - 400) // 160). About 200 s.
MAX_FRAMES = 4 * MAX_ENCODER_LEN
MAX_SAMPLES = MIN_SAMPLES + 160 * (MAX_FRAMES - 1) + 159
assert encoder_length(MAX_FRAMES) == MAX_ENCODER_LEN < encoder_length(MAX_FRAMES + 1)
assert frames_for(MAX_SAMPLES) == MAX_FRAMES < frames_for(MAX_SAMPLES + 1)


def load_audio(path: str | Path) -> np.ndarray:
    """Read a wav/flac/ogg file.

    returns: shape = (num_samples,), float32, 16 kHz mono, int16 scale (about +-32768).
    Raises OptimizeError for a missing, unreadable, too short or too long file.
    """
    path = Path(path)
    if not path.is_file():
        raise OptimizeError(f"audio file {path} does not exist", "check the path")
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise OptimizeError(
            f"cannot read audio {path}: {reason}", "pass a wav, flac or ogg file (ffmpeg -i IN -ar 16000 -ac 1 OUT.wav)"
        ) from e
    samples = data.mean(axis=1) * INT16_SCALE  # stereo -> mono by averaging channels
    if rate != SAMPLE_RATE:
        g = gcd(int(rate), SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // g, int(rate) // g)
    check_length(len(samples), str(path))
    return samples.astype(np.float32)


def check_length(num_samples: int, what: str) -> None:
    """Raise OptimizeError unless 16 kHz audio of `num_samples` gives 1..MAX_FRAMES fbank frames."""
    if num_samples < MIN_SAMPLES:
        raise OptimizeError(
            f"audio {what} has {num_samples} samples at 16 kHz, fewer than one 25 ms fbank frame ({MIN_SAMPLES})",
            "pass audio of at least 0.025 s",
        )
    if num_samples > MAX_SAMPLES:
        raise OptimizeError(
            f"audio {what} lasts {num_samples / SAMPLE_RATE:.1f} s, longer than the encoder's positional "
            f"encoding allows ({MAX_SAMPLES / SAMPLE_RATE:.2f} s, T' <= {MAX_ENCODER_LEN})",
            "split it into segments of at most 60 s, the length FireRedASR recommends",
        )
