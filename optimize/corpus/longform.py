"""A long recording made of manifest utterances joined with pauses, and where each one lies.

Used to show that long-audio transcription (VAD -> segments -> batch decode) finds every
sentence, in order, at the right time. Pauses are low-level Gaussian room noise (about -50 dBFS),
not digital silence, so the VAD has to tell speech from noise rather than from zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimize.corpus.manifest import Utterance
from optimize.runtime.audio import load_audio
from optimize.runtime.features import SAMPLE_RATE

ROOM_NOISE = 100.0  # int16-scale standard deviation of the pause noise (about -50 dBFS)


@dataclass(frozen=True)
class Placed:
    """One utterance inside the recording."""

    utterance: Utterance
    start: float  # seconds: where its audio file begins in the recording
    end: float  # seconds: where its audio file ends


def join(utterances: list[Utterance], seconds: float, pause: tuple[float, float] = (0.6, 1.5), seed: int = 0) -> tuple[np.ndarray, list[Placed]]:
    """Utterances in the given order, each followed by a pause drawn from `pause`, until `seconds` is reached.

    returns: samples, shape = (num_samples,), float32, 16 kHz, int16 scale; and the placed utterances.
    The recording starts with a pause too and ends after the last whole utterance's pause.
    """
    rng = np.random.default_rng(seed)
    pieces, placed, t = [], [], 0
    lead = int(rng.uniform(*pause) * SAMPLE_RATE)
    pieces.append(rng.normal(0, ROOM_NOISE, lead))
    t += lead
    for u in utterances:
        audio = load_audio(u.audio)
        gap = int(rng.uniform(*pause) * SAMPLE_RATE)
        if (t + len(audio) + gap) / SAMPLE_RATE > seconds:
            break
        placed.append(Placed(u, t / SAMPLE_RATE, (t + len(audio)) / SAMPLE_RATE))
        pieces += [audio + rng.normal(0, ROOM_NOISE, len(audio)), rng.normal(0, ROOM_NOISE, gap)]
        t += len(audio) + gap
    return np.concatenate(pieces).astype(np.float32), placed
