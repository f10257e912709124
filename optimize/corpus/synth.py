"""Synthesize corpus utterances with espeak-ng under recording conditions, all from a seed.

An utterance is a pure function of (split, seed, index): `plan_utterance` draws every choice from
`numpy.random.default_rng([SPLIT_CODES[split], seed, index])` and `synthesize` renders it to 16 kHz
mono int16 PCM. The manifest stores the sha256 of that PCM, so a split can be regenerated and checked
even when the committed audio is a lossy container. Bit-exact regeneration needs the same espeak-ng
build (its version is recorded in `corpus.json`) and the same numpy/scipy FFT (the room impulse
response is applied by FFT convolution).

An utterance is 1 to ~20 s: one sentence, or several sentences in one language with a pause between
them, each possibly at its own level. The recording chain after the voice: room reverberation
(synthetic impulse response), channel (full band, telephone band, or a cheap low-pass microphone),
mains hum, additive noise down to 5 dB SNR, and the overall level.

Conditions: train/dev/calib draw every factor at random from the SEEN voices, variants and noises.
Eval utterance i gets condition EVAL_CONDITIONS[i % len]: each condition isolates one factor on a
mild base recording (seen voice, rate 140-190, light or no noise) so the report can show accuracy per
condition; "combined" draws everything like train, "unseen_voice" uses held-out variants and
English accent, "unseen_noise" held-out babble noise. Every utterance also records its length, so
reports can split by length bucket.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfilt

from optimize.corpus import sentences
from optimize.errors import OptimizeError

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050  # espeak-ng's fixed output rate; 16000/22050 = 320/441 for resample_poly

SPLIT_CODES = {"train": 1, "dev": 2, "eval": 3, "calib": 4}  # first word of the per-utterance seed

# `cmn` reads each character's dictionary pinyin with *English* letter rules ("latin as English"),
# so most characters come out as English syllables; `cmn-latn-pinyin` reads them as Mandarin.
ZH_VOICE = "cmn-latn-pinyin"
EN_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-us-nyc", "en-gb-x-gbclan")
# `espeak-ng --voices=variant` of espeak-ng 1.51 ("" = the voice's own), minus HELDOUT_VARIANTS.
VARIANTS = (
    "", "adam", "Alex", "Alicia", "Andrea", "Annie", "antonio", "aunty", "benjamin", "boris", "caleb",
    "david", "Demonic", "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "announcer",
    "Henrique", "Hugo", "iven", "iven2", "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda",
    "marcelo", "Marco", "Mario", "max", "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo",
    "paul", "pedro", "quincy", "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert", "robosoft",
    "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8", "steph",
    "steph2", "steph3", "Storm", "Tweaky", "UniRobot", "zac", "anika", "anikaRobot", "AnxiousAndy", "fast",
    "f1", "f2", "f3", "f4", "whisperf", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "m1", "m2", "m3",
    "m4", "m5", "m7", "m8", "norbert", "sandro", "shelby", "travis", "victor", "whisper", "croak", "grandma",
)  # fmt: skip
NOISES = ("none", "white", "pink", "brown")
CHANNELS = ("wide", "telephone", "lowpass")

# Held out of train/dev/calib; only eval uses them.
HELDOUT_EN_VOICES = ("en-gb-x-gbcwmd",)
HELDOUT_VARIANTS = ("f5", "m6", "Andy", "belinda", "grandpa", "klatt6")
HELDOUT_NOISES = ("babble",)

EVAL_CONDITIONS = ("base", "fast", "slow", "reverb", "telephone", "hum", "low_snr", "level",
                   "unseen_voice", "unseen_noise", "combined")  # eval utterance i gets [i % 11]

RATE_WPM = (110, 240)  # espeak -s over the whole corpus; its default is 175
BASE_RATE_WPM = (140, 190)  # eval conditions other than fast/slow
FAST_WPM, SLOW_WPM = (200, 240), (110, 135)
PITCH = (25, 75)  # espeak -p, 0-99; default 50
PEAK = (0.05, 0.9)  # speech peak after scaling, of int16 full scale
QUIET_PEAK = (0.02, 0.08)  # "level": a quiet recording
SENTENCE_GAIN_DB = (-12.0, 0.0)  # "level": each sentence at its own level (talker moves, turns away)
PAD_S = (0.1, 0.4)  # silence before and after the speech, each drawn separately
PAUSE_S = (0.15, 1.0)  # silence between sentences
SNR_DB = (5.0, 25.0)  # additive noise over the whole corpus
BASE_SNR_DB = (15.0, 25.0)
LOW_SNR_DB = (5.0, 8.0)
RT60_S = (0.2, 0.9)  # reverberation time of the synthetic room
HUM_DB = (-30.0, -10.0)  # hum power relative to the speech power
MAX_SPEECH_S = 19.0  # speech (without pads) of the longest utterance
SINGLE = 0.3  # share of one-sentence utterances (the old corpus: one sentence, 0.6-3.6 s)
ZH_FRACTION = 0.5

# Training/calibration draws each factor independently with these probabilities.
P_REVERB, P_HUM, P_LEVEL = 0.3, 0.15, 0.25
P_CHANNEL = {"wide": 0.7, "telephone": 0.2, "lowpass": 0.1}


@dataclass(frozen=True)
class UtterancePlan:
    """Everything needed to render one utterance; drawn by `plan_utterance`."""

    id: str  # "<split>-<index:06d>", also the audio file stem
    condition: str  # "seen" (train/dev/calib) or one of EVAL_CONDITIONS
    lang: str  # "zh" | "en"
    voice: str  # espeak-ng -v argument, "<voice>[+<variant>]"
    rate: int  # espeak-ng -s, words per minute
    pitch: int  # espeak-ng -p
    peak: float  # loudest sentence's peak, fraction of int16 full scale
    pad_before: float  # seconds of silence (plus noise) before the speech
    pad_after: float
    target_s: float  # speech length to reach by adding sentences (0: one sentence)
    level_changes: bool  # each sentence at its own gain in SENTENCE_GAIN_DB
    rt60: float | None  # reverberation time of the room (None: dry)
    channel: str  # one of CHANNELS
    hum_hz: int | None  # 50 or 60 Hz mains hum (None: no hum)
    hum_db: float | None  # hum power over speech power
    noise: str  # one of NOISES or HELDOUT_NOISES
    snr_db: float | None  # None when noise == "none"
    noise_seed: int  # seeds noise, room and pauses, so they do not shift when the text changes


@dataclass(frozen=True)
class Rendered:
    """A synthesized utterance: the text actually spoken and its PCM."""

    plan: UtterancePlan
    text: str  # the sentences joined (English with a space, Mandarin without)
    pcm: np.ndarray  # shape = (n_samples,), int16, 16 kHz mono
    sentences: int  # number of sentences spoken

    @property
    def duration(self) -> float:
        return round(len(self.pcm) / SAMPLE_RATE, 3)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.pcm.astype("<i2").tobytes()).hexdigest()


def _pick(rng: np.random.Generator, items) -> str:
    return items[int(rng.integers(len(items)))]


def _voice(rng: np.random.Generator, lang: str, unseen: bool) -> str:
    variant = _pick(rng, HELDOUT_VARIANTS if unseen else VARIANTS)
    if lang == "zh":
        base = ZH_VOICE
    else:
        base = _pick(rng, EN_VOICES + HELDOUT_EN_VOICES if unseen else EN_VOICES)
    return f"{base}+{variant}" if variant else base


def condition_of(split: str, index: int) -> str:
    return EVAL_CONDITIONS[index % len(EVAL_CONDITIONS)] if split == "eval" else "seen"


def utterance_rng(split: str, seed: int, index: int) -> np.random.Generator:
    if split not in SPLIT_CODES:
        raise OptimizeError(f"unknown split {split!r}", f"use one of {', '.join(SPLIT_CODES)}")
    return np.random.default_rng([SPLIT_CODES[split], seed, index])


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], digits: int = 1) -> float:
    return round(float(rng.uniform(*bounds)), digits)


def plan_utterance(split: str, seed: int, index: int) -> tuple[UtterancePlan, np.random.Generator]:
    """Draw the conditions of one utterance; the returned generator then draws its text."""
    rng = utterance_rng(split, seed, index)
    condition = condition_of(split, index)
    lang = "zh" if rng.random() < ZH_FRACTION else "en"
    # Every factor is drawn (so the generator advances the same way), then the condition decides.
    voice = _voice(rng, lang, unseen=condition == "unseen_voice")
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    target_s = 0.0 if rng.random() < SINGLE else _uniform(rng, (2.0, MAX_SPEECH_S))
    reverb, hum, level = rng.random() < P_REVERB, rng.random() < P_HUM, rng.random() < P_LEVEL
    channel = str(rng.choice(CHANNELS, p=[P_CHANNEL[c] for c in CHANNELS]))
    noise_kind = _pick(rng, NOISES)
    snr_db = _uniform(rng, SNR_DB)
    peak = _uniform(rng, PEAK, 4)
    rt60 = _uniform(rng, RT60_S, 2)
    hum_hz, hum_db = int(rng.choice((50, 60))), _uniform(rng, HUM_DB)
    if condition not in ("seen", "combined"):  # one factor on a mild base recording
        rate = {"fast": FAST_WPM, "slow": SLOW_WPM}.get(condition, BASE_RATE_WPM)
        rate = int(rng.integers(rate[0], rate[1] + 1))
        reverb, hum, level = condition == "reverb", condition == "hum", condition == "level"
        channel = "telephone" if condition == "telephone" else "wide"
        snr_db = _uniform(rng, LOW_SNR_DB if condition == "low_snr" else BASE_SNR_DB)
        if condition == "unseen_noise":
            noise_kind, snr_db = HELDOUT_NOISES[0], _uniform(rng, SNR_DB)
        elif condition == "low_snr":
            noise_kind = _pick(rng, NOISES[1:])
        peak = _uniform(rng, QUIET_PEAK if level else (0.3, 0.9), 4)
    plan = UtterancePlan(
        id=f"{split}-{index:06d}",
        condition=condition,
        lang=lang,
        voice=voice,
        rate=rate,
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        peak=peak,
        pad_before=_uniform(rng, PAD_S, 3),
        pad_after=_uniform(rng, PAD_S, 3),
        target_s=target_s,
        level_changes=level,
        rt60=rt60 if reverb else None,
        channel=channel,
        hum_hz=hum_hz if hum else None,
        hum_db=hum_db if hum else None,
        noise=noise_kind,
        snr_db=None if noise_kind == "none" else snr_db,
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


def _sentence_audio(text: str, plan: UtterancePlan) -> np.ndarray:
    """One trimmed sentence at 16 kHz with unit peak. shape = (n,), float64."""
    x = resample_poly(_trim(espeak(text, plan.voice, plan.rate, plan.pitch)), 320, 441)
    return x / max(np.abs(x).max(), 1e-9)


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


def room_impulse_response(rt60: float, seed: int) -> np.ndarray:
    """A synthetic room: direct path, then exponentially decaying noise (-60 dB after `rt60` s).

    Early reflections start 2-8 ms after the direct sound; the tail is low-passed so high
    frequencies die faster, as in real rooms. Unit energy. shape = (n,), float64.
    """
    rng = np.random.default_rng([seed, 1])
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000): 60 dB of amplitude
    tail = lfilter([0.6], [1.0, -0.4], tail)
    delay = int(rng.uniform(0.002, 0.008) * SAMPLE_RATE)
    tail[:delay] = 0.0
    drr = 10 ** (rng.uniform(-3.0, 6.0) / 10)  # direct-to-reverberant energy ratio
    h = tail / np.sqrt(np.sum(tail**2)) / np.sqrt(drr)
    h[0] = 1.0
    return h / np.sqrt(np.sum(h**2))


def channel_filter(x: np.ndarray, channel: str) -> np.ndarray:
    """Band-limit like the recording channel: telephone = 300-3400 Hz through an 8 kHz codec rate,
    lowpass = a cheap microphone's roll-off above 3.5 kHz; wide is untouched."""
    if channel == "wide":
        return x
    if channel == "telephone":
        x = resample_poly(x, 1, 2)  # 8 kHz, its anti-alias filter cuts at 4 kHz
        x = sosfilt(butter(4, (300, 3400), "bandpass", fs=SAMPLE_RATE // 2, output="sos"), x)
        return resample_poly(x, 2, 1)[: len(x) * 2]
    if channel == "lowpass":
        return sosfilt(butter(6, 3500, "lowpass", fs=SAMPLE_RATE, output="sos"), x)
    raise OptimizeError(f"unknown channel {channel!r}", f"use one of {', '.join(CHANNELS)}")


def hum(n: int, hz: int, seed: int) -> np.ndarray:
    """Mains hum: the fundamental and its odd harmonics up to 1 kHz. Unit RMS. shape = (n,)."""
    rng = np.random.default_rng([seed, 2])
    t = np.arange(n) / SAMPLE_RATE
    x = np.zeros(n)
    for k in range(1, 1000 // hz + 1, 2):
        x += rng.uniform(0.1, 1.0) / k * np.sin(2 * np.pi * hz * k * t + rng.uniform(0, 2 * np.pi))
    return x / max(np.sqrt(np.mean(x**2)), 1e-12)


def _record(parts: list[np.ndarray], gains: list[float], pauses: list[int], plan: UtterancePlan) -> np.ndarray:
    """Sentences with pauses and levels, through room, channel, hum and noise, to int16 PCM."""
    speech = [parts[0] * gains[0]]
    for part, gain, pause in zip(parts[1:], gains[1:], pauses):
        speech += [np.zeros(pause), part * gain]
    speech = np.concatenate(speech)
    before = int(round(plan.pad_before * SAMPLE_RATE))
    after = int(round(plan.pad_after * SAMPLE_RATE))
    x = np.concatenate([np.zeros(before), speech, np.zeros(after)])
    span = slice(before, before + len(speech))
    if plan.rt60 is not None:
        x = fftconvolve(x, room_impulse_response(plan.rt60, plan.noise_seed))[: len(x)]
    x = channel_filter(x, plan.channel)
    power = np.mean(x[span] ** 2)  # speech power as recorded, over the speech span
    x = x * np.sqrt(0.5 / max(power, 1e-12))  # unit-ish scale before adding the rest
    power = np.mean(x[span] ** 2)
    if plan.hum_hz is not None:
        x = x + hum(len(x), plan.hum_hz, plan.noise_seed) * np.sqrt(power * 10 ** (plan.hum_db / 10))
    if plan.noise != "none":
        x = x + noise(plan.noise, len(x), plan.noise_seed) * np.sqrt(power * 10 ** (-plan.snr_db / 10))
    x = x * (plan.peak / max(np.abs(x[span]).max(), 1e-9))
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def synthesize(split: str, seed: int, index: int, adjust: Callable[[UtterancePlan], UtterancePlan] | None = None) -> Rendered:
    """Render utterance `index` of (split, seed). Same arguments, same PCM, on the same espeak-ng.

    `adjust` changes the drawn plan before rendering (the text is still drawn from the seed), for
    probes outside the corpus's conditions (benchmarks/past_ranges.py); no split uses it.
    """
    plan, rng = plan_utterance(split, seed, index)
    if adjust is not None:
        plan = adjust(plan)
    extra = np.random.default_rng([plan.noise_seed, 3])  # pauses and levels
    texts: list[str] = []
    parts: list[np.ndarray] = []
    pauses: list[int] = []
    length = 0.0
    # Redraw a sentence (text only) while it does not fit; the generator makes retries reproducible.
    for _ in range(60):
        text = sentences.sentence(rng, plan.lang)
        part = _sentence_audio(text, plan)
        seconds = len(part) / SAMPLE_RATE
        pause = int(extra.uniform(*PAUSE_S) * SAMPLE_RATE) if parts else 0
        if plan.target_s == 0.0 and not 0.6 <= seconds <= 8.0:
            continue
        if length + pause / SAMPLE_RATE + seconds > MAX_SPEECH_S:
            if parts:
                break
            continue
        texts.append(text)
        parts.append(part)
        if parts[1:]:
            pauses.append(pause)
        length += pause / SAMPLE_RATE + seconds
        if length >= plan.target_s:
            break
    if not parts:
        raise AssertionError(f"{plan.id}: no sentence fits at rate {plan.rate}")
    gains = [10 ** (extra.uniform(*SENTENCE_GAIN_DB) / 20) if plan.level_changes else 1.0 for _ in parts]
    joined = ("" if plan.lang == "zh" else " ").join(texts)
    return Rendered(plan, joined, _record(parts, gains, pauses, plan), len(parts))


def espeak_version() -> str:
    """`espeak-ng --version` first words, e.g. "eSpeak NG text-to-speech: 1.51"."""
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError as e:
        raise OptimizeError("espeak-ng is not installed", "apt-get install espeak-ng") from e
    return out.split("  Data at")[0].strip()
