"""Synthesize corpus utterances with espeak-ng: voices, variants, rate, pitch, noise, all from a seed.

An utterance is a pure function of (split, seed, index): `plan_utterance` draws every choice from
`numpy.random.default_rng([SPLIT_CODES[split], seed, index])` and `synthesize` renders it to 16 kHz
mono int16 PCM. The manifest stores the sha256 of that PCM, so a split can be regenerated and checked
even when the committed audio is a lossy container. Bit-exact regeneration needs the same espeak-ng
build (its version is recorded in `corpus.json`); the noise filters are IIR recurrences rather than
FFTs so that float rounding does not depend on SIMD code paths.

Conditions: train/dev/calib use only the SEEN voices, variants and noises. eval mixes "seen" with
"unseen_voice" (held-out variants, plus a held-out English accent) and "unseen_noise" (babble), so
the report can show accuracy per condition.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter, resample_poly

from optimize.corpus import sentences
from optimize.errors import OptimizeError

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng's fixed output rate; 16000/22050 = 320/441 for resample_poly

SPLIT_CODES = {"train": 1, "dev": 2, "eval": 3, "calib": 4}  # first word of the per-utterance seed

# `cmn` reads each character's dictionary pinyin with *English* letter rules ("latin as English"),
# so most characters come out as English syllables; `cmn-latn-pinyin` reads them as Mandarin.
ZH_VOICE = "cmn-latn-pinyin"
EN_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan")
VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4", "klatt", "klatt2")  # `espeak-ng --voices=variant`
NOISES = ("none", "white", "pink", "brown")
SNRS_DB = (20, 15, 10)

# Held out of train/dev/calib; only eval uses them.
HELDOUT_EN_VOICES = ("en-gb-x-gbcwmd",)
HELDOUT_VARIANTS = ("f5", "m6")
HELDOUT_NOISES = ("babble",)

EVAL_CONDITIONS = ("seen", "seen", "unseen_voice", "unseen_noise")  # eval utterance i gets [i % 4]

RATE_WPM = (140, 190)  # espeak -s; its default is 175
PITCH = (30, 70)  # espeak -p, 0-99; default 50
PEAK = (0.3, 0.9)  # speech peak after scaling, of int16 full scale
PAD_S = (0.1, 0.3)  # silence before and after the speech, each drawn separately
SPEECH_S = (0.6, 3.6)  # accepted speech length; with padding utterances are ~1-4 s
ZH_FRACTION = 0.5


@dataclass(frozen=True)
class UtterancePlan:
    """Everything needed to render one utterance; drawn by `plan_utterance`."""

    id: str  # "<split>-<index:06d>", also the audio file stem
    condition: str  # "seen" | "unseen_voice" | "unseen_noise"
    lang: str  # "zh" | "en"
    voice: str  # espeak-ng -v argument, "<voice>[+<variant>]"
    rate: int  # espeak-ng -s, words per minute
    pitch: int  # espeak-ng -p
    peak: float  # speech peak, fraction of int16 full scale
    pad_before: float  # seconds of silence (plus noise) before the speech
    pad_after: float
    noise: str  # one of NOISES or HELDOUT_NOISES
    snr_db: float | None  # None when noise == "none"
    noise_seed: int  # seeds the noise generator, so the noise does not shift when the text changes


@dataclass(frozen=True)
class Rendered:
    """A synthesized utterance: the text actually spoken and its PCM."""

    plan: UtterancePlan
    text: str
    pcm: np.ndarray  # shape = (n_samples,), int16, 16 kHz mono

    @property
    def duration(self) -> float:
        return round(len(self.pcm) / SAMPLE_RATE, 3)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.pcm.astype("<i2").tobytes()).hexdigest()


def _voice(rng: np.random.Generator, lang: str, unseen: bool) -> str:
    variants = HELDOUT_VARIANTS if unseen else VARIANTS
    variant = variants[int(rng.integers(len(variants)))]
    if lang == "zh":
        base = ZH_VOICE
    else:
        voices = EN_VOICES + HELDOUT_EN_VOICES if unseen else EN_VOICES
        base = voices[int(rng.integers(len(voices)))]
    return f"{base}+{variant}" if variant else base


def condition_of(split: str, index: int) -> str:
    return EVAL_CONDITIONS[index % len(EVAL_CONDITIONS)] if split == "eval" else "seen"


def utterance_rng(split: str, seed: int, index: int) -> np.random.Generator:
    if split not in SPLIT_CODES:
        raise OptimizeError(f"unknown split {split!r}", f"use one of {', '.join(SPLIT_CODES)}")
    return np.random.default_rng([SPLIT_CODES[split], seed, index])


def plan_utterance(split: str, seed: int, index: int) -> tuple[UtterancePlan, np.random.Generator]:
    """Draw the acoustic conditions of one utterance; the returned generator then draws its text."""
    rng = utterance_rng(split, seed, index)
    condition = condition_of(split, index)
    lang = "zh" if rng.random() < ZH_FRACTION else "en"
    noise_kind = HELDOUT_NOISES[0] if condition == "unseen_noise" else NOISES[int(rng.integers(len(NOISES)))]
    plan = UtterancePlan(
        id=f"{split}-{index:06d}",
        condition=condition,
        lang=lang,
        voice=_voice(rng, lang, unseen=condition == "unseen_voice"),
        rate=int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        peak=round(float(rng.uniform(*PEAK)), 4),
        pad_before=round(float(rng.uniform(*PAD_S)), 3),
        pad_after=round(float(rng.uniform(*PAD_S)), 3),
        noise=noise_kind,
        snr_db=None if noise_kind == "none" else float(SNRS_DB[int(rng.integers(len(SNRS_DB)))]),
        noise_seed=int(rng.integers(2**31)),
    )
    return plan, rng


def espeak(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """Run espeak-ng once. Returns shape = (n,), float64 in [-1, 1], at ESPEAK_RATE Hz."""
    # Lower-case English: espeak spells out upper-case words it takes for acronyms (IT -> "I T").
    cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text.lower()]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
    except FileNotFoundError as e:
        raise OptimizeError("espeak-ng is not installed", "apt-get install espeak-ng") from e
    except subprocess.CalledProcessError as e:
        raise OptimizeError(f"espeak-ng failed for voice {voice!r}: {e.stderr.decode().strip()}",
                            "check the voice with `espeak-ng --voices`") from e
    # --stdout writes a streaming WAV whose size fields are placeholders, so locate the data chunk.
    start = out.find(b"data")
    if start < 0 or len(out) <= start + 8:
        raise OptimizeError(f"espeak-ng gave no audio for voice {voice!r}", "check `espeak-ng --voices`")
    return np.frombuffer(out[start + 8:], dtype="<i2").astype(np.float64) / 32768.0


def _trim(x: np.ndarray, rel: float = 0.01) -> np.ndarray:
    """Cut leading/trailing samples quieter than `rel` * peak (espeak appends ~0.3 s of silence)."""
    loud = np.flatnonzero(np.abs(x) > rel * np.abs(x).max())
    return x[loud[0]:loud[-1] + 1] if len(loud) else x


def _speech(text: str, plan: UtterancePlan) -> np.ndarray:
    """Trimmed speech at 16 kHz, scaled to the planned peak. shape = (n,), float64."""
    x = resample_poly(_trim(espeak(text, plan.voice, plan.rate, plan.pitch)), 320, 441)
    return x * (plan.peak / max(np.abs(x).max(), 1e-9))


# Pink-noise IIR approximation (-3 dB/octave within ~0.3 dB), from J. O. Smith, "Spectral Audio
# Signal Processing", section "Example: Synthesis of 1/f Noise (Pink Noise)".
_PINK_B = (0.049922035, -0.095993537, 0.050612699, -0.004408786)
_PINK_A = (1.0, -2.494956002, 2.017265875, -0.522189400)


def _babble(rng: np.random.Generator, n: int) -> np.ndarray:
    """Overlapping speech of 4 seen voices (the held-out noise type). shape = (n,), float64."""
    total = np.zeros(n)
    for _ in range(4):
        lang = "zh" if rng.random() < ZH_FRACTION else "en"
        voice = _voice(rng, lang, unseen=False)
        talk = _trim(espeak(sentences.sentence(rng, lang), voice, 175, int(rng.integers(*PITCH))))
        talk = resample_poly(talk, 320, 441)
        talk = np.tile(talk, n // len(talk) + 2)
        offset = int(rng.integers(len(talk) - n))
        total += talk[offset:offset + n] / max(np.abs(talk).max(), 1e-9)
    return total


def noise(kind: str, n: int, seed: int) -> np.ndarray:
    """`n` samples of noise `kind` with unit RMS. shape = (n,), float64."""
    rng = np.random.default_rng(seed)
    if kind == "babble":
        x = _babble(rng, n)
    else:
        white = rng.standard_normal(n + SAMPLE_RATE)  # one extra second lets the filters settle
        if kind == "white":
            x = white
        elif kind == "pink":
            x = lfilter(_PINK_B, _PINK_A, white)
        elif kind == "brown":
            x = lfilter([1.0], [1.0, -0.995], white)  # leaky integrator: -6 dB/octave above ~12 Hz
        else:
            raise OptimizeError(f"unknown noise type {kind!r}", f"use one of {NOISES + HELDOUT_NOISES}")
        x = x[SAMPLE_RATE:]
    return x / max(np.sqrt(np.mean(x**2)), 1e-12)


def _mix(speech: np.ndarray, plan: UtterancePlan) -> np.ndarray:
    """Pad the speech and add noise at the planned SNR (speech power over the speech span)."""
    before = int(round(plan.pad_before * SAMPLE_RATE))
    after = int(round(plan.pad_after * SAMPLE_RATE))
    x = np.concatenate([np.zeros(before), speech, np.zeros(after)])
    if plan.noise != "none":
        speech_rms = np.sqrt(np.mean(speech**2))
        x = x + noise(plan.noise, len(x), plan.noise_seed) * speech_rms * 10 ** (-plan.snr_db / 20)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def synthesize(split: str, seed: int, index: int) -> Rendered:
    """Render utterance `index` of (split, seed). Same arguments, same PCM, on the same espeak-ng."""
    plan, rng = plan_utterance(split, seed, index)
    # Redraw the text (only) until the speech length fits; the generator makes the retries reproducible.
    for _ in range(50):
        text = sentences.sentence(rng, plan.lang)
        speech = _speech(text, plan)
        if SPEECH_S[0] <= len(speech) / SAMPLE_RATE <= SPEECH_S[1]:
            return Rendered(plan, text, _mix(speech, plan))
    raise AssertionError(f"{plan.id}: no sentence of {SPEECH_S} s in 50 draws at rate {plan.rate}")


def espeak_version() -> str:
    """`espeak-ng --version` first words, e.g. "eSpeak NG text-to-speech: 1.51"."""
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError as e:
        raise OptimizeError("espeak-ng is not installed", "apt-get install espeak-ng") from e
    return out.split("  Data at")[0].strip()
