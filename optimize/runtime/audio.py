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
# FireRedASR is trained on and supports utterances of up to 60 s (its README); longer
# audio decodes to confident wrong text, so it is refused unless segmented first.
MAX_SECONDS = 60.0
SPLIT_FIX = "split it into segments of at most 60 s, FireRedASR's limit (e.g. sox IN.wav OUT.wav trim 0 60 : newfile : restart)"


def encoder_length(frames: int) -> int:
    """T' after the encoder's 6-frame pad and two kernel-3 stride-2 convs."""
    return ((frames + 6 - 3) // 2 + 1 - 3) // 2 + 1


# Largest fbank frame count the encoder accepts, and the sample count that
# yields it (frames_for(n) = 1 + (n - 400) // 160). About 200 s.
MAX_FRAMES = 4 * MAX_ENCODER_LEN
MAX_SAMPLES = MIN_SAMPLES + 160 * (MAX_FRAMES - 1) + 159
assert encoder_length(MAX_FRAMES) == MAX_ENCODER_LEN < encoder_length(MAX_FRAMES + 1)
assert frames_for(MAX_SAMPLES) == MAX_FRAMES < frames_for(MAX_SAMPLES + 1)


def load_audio(path: str | Path, max_seconds: float | None = MAX_SECONDS) -> np.ndarray:
    """Read a wav/flac/ogg file the encoder can take whole.

    max_seconds: refuse longer audio (None: only the encoder's own limit, for callers
    that segment long audio themselves).
    returns: shape = (num_samples,), float32, 16 kHz mono, int16 scale (about +-32768).
    Raises OptimizeError for a missing, unreadable, non-finite, too short or too long file.
    """
    samples = read_audio(path)
    check_length(len(samples), str(path))
    if max_seconds is not None:
        check_duration(len(samples), str(path), max_seconds)
    return samples


def read_audio(path: str | Path) -> np.ndarray:
    """`load_audio` without the length limit (long recordings go through the VAD).

    returns: shape = (num_samples,), float32, 16 kHz mono, int16 scale.
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
    check_finite(data, str(path))
    return _resample(data.mean(axis=1) * INT16_SCALE, int(rate))  # stereo -> mono by averaging channels


def check_finite(samples: np.ndarray, what: str) -> None:
    """Raise OptimizeError if any sample is NaN or infinite (a float file from a broken tool)."""
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.reshape(len(samples), -1).any(axis=1)))
        raise OptimizeError(
            f"audio {what} has {int(bad.sum())} NaN/Inf sample(s), the first at {first / SAMPLE_RATE:.3f} s",
            "re-encode it from the source as 16-bit PCM (ffmpeg -i IN -ar 16000 -ac 1 -c:a pcm_s16le OUT.wav)",
        )


def check_duration(num_samples: int, what: str, max_seconds: float = MAX_SECONDS) -> None:
    """Raise OptimizeError if 16 kHz audio of `num_samples` lasts longer than `max_seconds`."""
    if num_samples > max_seconds * SAMPLE_RATE:
        raise OptimizeError(f"audio {what} lasts {num_samples / SAMPLE_RATE:.1f} s, longer than {max_seconds:g} s", SPLIT_FIX)


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // g, rate // g)
    return samples.astype(np.float32)


def from_array(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Samples from memory, as `read_audio` returns a file's.

    samples: shape = (num_samples,) or (num_samples, channels); channels are averaged.
      int16: used as they are; int32: full-scale 32-bit PCM, scaled to int16;
      float: must lie in [-1, 1] (soundfile's and sherpa-onnx's convention), scaled by 32768,
      so float x / 32768 and int16 x give identical features. Float input outside [-1, 1] is
      refused rather than guessed: int16-scale floats would otherwise be read as clipped noise.
    sample_rate: Hz; anything other than 16 kHz is resampled.
    returns: shape = (num_samples',), float32, 16 kHz mono, int16 scale.
    """
    x = np.asarray(samples)
    if x.ndim not in (1, 2) or x.size == 0:
        raise OptimizeError(f"audio array of shape {x.shape}", "pass shape (num_samples,) or (num_samples, channels)")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise OptimizeError(f"sample rate {sample_rate!r}", "pass the array's sample rate in Hz, e.g. 16000")
    if x.dtype == np.int16:
        scaled = x.astype(np.float64)
    elif x.dtype == np.int32:
        scaled = x.astype(np.float64) / 65536.0
    elif np.issubdtype(x.dtype, np.floating):
        peak = float(np.abs(x).max())
        if not np.isfinite(peak) or peak > 1.0:
            raise OptimizeError(
                f"float audio must lie in [-1, 1]; this array peaks at {peak:.6g}",
                "pass int16 samples as an int16 array (x.astype(np.int16)), or divide float int16-scale samples by 32768",
            )
        scaled = x.astype(np.float64) * INT16_SCALE
    else:
        raise OptimizeError(f"audio array of dtype {x.dtype}", "pass float32/float64 in [-1, 1], int16 or int32 samples")
    return _resample(scaled.mean(axis=1) if x.ndim == 2 else scaled, int(sample_rate))


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
