"""Speech recognition with an ONNX pair: audio -> fbank + CMVN -> encoder -> search -> text."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from optimize import contract
from optimize.errors import OptimizeError
from optimize.runtime import ctc
from optimize.runtime.audio import MAX_FRAMES, check_finite, check_length, from_array, read_audio
from optimize.runtime.binding import BoundPair
from optimize.runtime.features import NUM_MEL_BINS, SAMPLE_RATE, apply_cmvn, fbank
from optimize.runtime.inference import encode, open_decoder
from optimize.runtime.search import DecodeConfig, Inference, search_scored
from optimize.runtime.providers import ProviderOptions
from optimize.runtime.session import OrtPair
from optimize.runtime.tokens import TokenTable
from optimize.runtime.vad import VadConfig, speech_segments

Audio = Union[str, Path, np.ndarray]  # a file, or samples in memory (then a sample rate is needed)

# Warm-up buckets in fbank frames (1, 3, 10 and 30 s): on CUDA the arena grows and cuDNN
# picks conv algorithms on the first run of each new input shape (ort-toolchain.md §6).
WARMUP_FRAMES = (100, 300, 1000, 3000)


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # token ids without sos/eos
    text: str  # detokenized as FireRedASR does
    # (start, end) seconds per token from the CTC alignment (Recognizer(timestamps=True)); None
    # when not asked, or when the tokens cannot be aligned (FireRedASR2 gives none then either)
    times: tuple[tuple[float, float], ...] | None = None
    score: float | None = None  # the search's score (runtime.search.Decoded.score)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the recording
    end: float  # seconds; end - start <= VadConfig.max_segment
    hypothesis: Hypothesis


@dataclass(frozen=True)
class Transcript:
    """One recording: its segments in time order (one covering it all when it was not cut)."""

    duration: float  # seconds of audio
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return " ".join(s.hypothesis.text for s in self.segments if s.hypothesis.text)


@dataclass(frozen=True)
class FrontEnd:
    """fbank + CMVN with a pair's statistics: what its encoder expects as `x`."""

    cmvn_mean: np.ndarray  # shape = (80,), float32, from the encoder metadata
    cmvn_inv_stddev: np.ndarray  # shape = (80,), float32

    @classmethod
    def of(cls, model_dir: str | Path) -> FrontEnd:
        """The front end of the pair in `model_dir`, from its encoder metadata alone (no session is opened)."""
        from optimize import graph

        enc, _, _ = contract.model_paths(Path(model_dir))
        meta = contract.parse_metadata(dict(graph.metadata(graph.load(enc, load_external=False))), str(enc))
        return cls(np.asarray(meta["cmvn_mean"]), np.asarray(meta["cmvn_inv_stddev"]))

    def features(self, samples: np.ndarray) -> np.ndarray:
        """samples: shape = (num_samples,), 16 kHz, int16 scale -> shape = (T, 80), float32, CMVN-normalized."""
        check_length(len(samples), "input")
        check_finite(samples, "input")
        return apply_cmvn(fbank(samples), self.cmvn_mean, self.cmvn_inv_stddev)


def cross_attention_mask(frames: np.ndarray, enc_len: int) -> np.ndarray:
    """Additive mask for the decoder's cross attention.

    frames: shape = (N,), int64, fbank frames per row. Row n keeps the first
    (frames + 3) // 4 encoder positions, the rule the official encoder's mask follows.
    returns: shape = (N, 1, 1, enc_len), float32, 0 valid / -inf padded.
    """
    valid = (frames + 3) // 4
    keep = np.arange(enc_len)[None, :] < valid[:, None]
    return np.where(keep, 0.0, -np.inf).astype(np.float32).reshape(len(frames), 1, 1, enc_len)


class Recognizer:
    """Transcribe with an exported pair (encoder.onnx, decoder.onnx, tokens.txt in model_dir)."""

    def __init__(
        self,
        model_dir: str | Path,
        decode: DecodeConfig = DecodeConfig(),
        provider: str = "cpu",
        threads: int = 0,
        options: ProviderOptions = ProviderOptions(),
        timestamps: bool = False,
    ):
        """`timestamps`: per-token times by CTC forced alignment; needs a pair exported with --with-ctc.

        decode.ctc_weight None takes the pair's recommended weight (contract.CTC_WEIGHT_KEY), else 0.
        """
        self.pair = OrtPair(model_dir, provider=provider, threads=threads, options=options)
        if decode.ctc_weight is None:
            decode = replace(decode, ctc_weight=self.pair.info.ctc_weight if self.pair.has_ctc else 0.0)
        self.decode = decode
        if timestamps and not self.pair.has_ctc:
            raise OptimizeError(
                f"{model_dir}: the encoder has no {contract.CTC_OUTPUT[0]} output, which timestamps need",
                "export a FireRedASR2 checkpoint with `optimize export --with-ctc`",
            )
        if decode.ctc_weight > 0 and not self.pair.has_ctc:
            raise OptimizeError(
                f"{model_dir}: the encoder has no {contract.CTC_OUTPUT[0]} output, which ctc_weight {decode.ctc_weight} needs",
                "decode with ctc_weight 0 (attention only), or export a FireRedASR2 checkpoint with `optimize export --with-ctc`",
            )
        self.timestamps = timestamps
        # CUDA always binds: a host round trip of cross K/V and both caches per step is what IOBinding removes
        self.bound = BoundPair(self.pair) if options.binds(provider) else None
        self.tokens = TokenTable.read(contract.model_paths(Path(model_dir))[2])
        info = self.pair.info
        if len(self.tokens) != info.vocab_size:
            raise OptimizeError(
                f"{model_dir}: tokens.txt has {len(self.tokens)} symbols, the model {info.vocab_size}",
                "use the tokens.txt exported with this model",
            )
        self.front_end = FrontEnd(np.asarray(info.cmvn_mean), np.asarray(info.cmvn_inv_stddev))
        if decode.batch_size > 1 and not (self.pair.has_cross_mask and self.pair.max_encoder_rows is None):
            raise OptimizeError(
                f"batch_size {decode.batch_size} needs a pair with a batch dim and a {contract.CROSS_MASK} input; {model_dir} has not",
                "use batch_size 1 with this pair, or re-export it with `optimize export`",
            )

    def features(self, samples: np.ndarray) -> np.ndarray:
        """samples: shape = (num_samples,), 16 kHz, int16 scale -> shape = (T, 80), float32, CMVN-normalized.

        This is the model-level entry: for arrays in [-1, 1] or at other rates use `transcribe`
        with a sample_rate, which converts them first (`runtime.audio.from_array`).
        """
        return self.front_end.features(samples)

    def transcribe(self, audio: Sequence[Audio], sample_rate: int | None = None) -> list[Hypothesis]:
        """Recognize each input whole; results in input order.

        audio: paths, or arrays (float in [-1, 1], int16 or int32; see `runtime.audio.from_array`)
        all at `sample_rate` Hz. Each must fit the encoder; `transcribe_long` cuts longer ones.
        With timestamps, times are FireRedASR2's user-level ones (ctc.audio_times: 60 ms
        earlier, within the audio, evenly spread when the alignment fails).
        """
        samples = [_samples(a, sample_rate) for a in audio]
        hyps = self.recognize_features([self.features(s) for s in samples])
        return [self._audio_times(h, len(s) / SAMPLE_RATE) for h, s in zip(hyps, samples)]

    def transcribe_long(self, audio: Sequence[Audio], sample_rate: int | None = None, vad: VadConfig = VadConfig()) -> list[Transcript]:
        """Recognize recordings of any length: those longer than vad.above seconds are cut into
        speech segments by the VAD; all segments of all inputs are decoded together, in batches of
        decode.batch_size grouped by length. Results in input order; token times (timestamps)
        count from the start of the recording.
        """
        spans, feats = [], []  # spans[k] = (input index, start, end) in samples
        durations = []
        for i, a in enumerate(audio):
            samples = _samples(a, sample_rate, check=False)
            durations.append(len(samples) / SAMPLE_RATE)
            cuts = speech_segments(samples, vad) if durations[-1] > vad.above else [(0, len(samples))]
            for start, end in cuts:
                check_length(end - start, _name(a, i))
                spans.append((i, start, end))
                feats.append(self.features(samples[start:end]))
        hyps = self.recognize_features(feats)
        segments: list[list[Segment]] = [[] for _ in audio]
        for (i, start, end), hyp in zip(spans, hyps):
            hyp = self._audio_times(hyp, (end - start) / SAMPLE_RATE, start / SAMPLE_RATE)
            segments[i].append(Segment(start / SAMPLE_RATE, end / SAMPLE_RATE, hyp))
        return [Transcript(d, tuple(s)) for d, s in zip(durations, segments)]

    def _audio_times(self, hyp: Hypothesis, seconds: float, offset: float = 0.0) -> Hypothesis:
        """With timestamps: the alignment's frame times as user-level seconds of audio lasting `seconds`, plus `offset`."""
        if not self.timestamps:
            return hyp
        times = ctc.audio_times(hyp.times, len(hyp.tokens), seconds)
        return replace(hyp, times=None if times is None else tuple((s + offset, e + offset) for s, e in times))

    def recognize_features(self, feats: list[np.ndarray]) -> list[Hypothesis]:
        """Recognize CMVN-normalized features, each shape = (T_i, 80), float32.

        Utterances are grouped by length into batches of decode.batch_size to
        limit padding; results come back in input order.
        """
        for i, f in enumerate(feats):
            if f.ndim != 2 or f.shape[1] != NUM_MEL_BINS or not 1 <= f.shape[0] <= MAX_FRAMES:
                raise OptimizeError(
                    f"features #{i} have shape {f.shape}, need (T, {NUM_MEL_BINS}) with 1 <= T <= {MAX_FRAMES}",
                    "compute them with Recognizer.features",
                )
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        results: list[Hypothesis | None] = [None] * len(feats)
        size = self.decode.batch_size
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            for i, hyp in zip(batch, self._recognize_batch([feats[i] for i in batch])):
                results[i] = hyp
        return results  # type: ignore[return-value]

    def warmup(self, lengths: tuple[int, ...] = WARMUP_FRAMES, steps: int = 2) -> None:
        """Decode decode.batch_size all-zero inputs of each length in `lengths` (frames) for `steps` steps, untimed.

        Longest first, so the arena's first chunks fit the shorter inputs after it.
        Harmless on the CPU, where it only pre-sizes the arena.
        """
        if steps < 1 or not all(1 <= n <= MAX_FRAMES for n in lengths):
            raise OptimizeError(f"warm-up lengths {lengths} / steps {steps}", f"use frames in [1, {MAX_FRAMES}] and steps >= 1")
        for n in sorted(lengths, reverse=True):
            self._recognize_batch([np.zeros((n, NUM_MEL_BINS), dtype=np.float32)] * self.decode.batch_size, steps)

    def _recognize_batch(self, feats: list[np.ndarray], max_len: int = 0) -> list[Hypothesis]:
        """One padded batch; max_len (0 = decode.max_len) caps the steps."""
        frames = np.array([f.shape[0] for f in feats], dtype=np.int64)
        x = np.zeros((len(feats), frames.max(), NUM_MEL_BINS), dtype=np.float32)  # pad with 0.0 after CMVN
        for row, f in enumerate(feats):
            x[row, : len(f)] = f
        model, maxlen, log_probs = self._encode(x, frames, max_len or self.decode.max_len)
        info = self.pair.info
        valid = (frames + 3) // 4  # encoder frames per row, the official mask rule
        scorer = None if self.decode.ctc_weight == 0 else ctc.PrefixScorer(log_probs, valid, self.decode.beam_size, info.eos)
        found = search_scored(model, len(feats), maxlen, self.decode, info.sos, info.eos, scorer)
        hyps = [Hypothesis(d.tokens, self.tokens.detokenize(d.tokens), score=d.score) for d in found]
        if not self.timestamps:
            return hyps
        return [replace(h, times=ctc.align(log_probs[row, : valid[row]], h.tokens)) for row, h in enumerate(hyps)]

    def _encode(self, x: np.ndarray, frames: np.ndarray, max_len: int) -> tuple[Inference, int, np.ndarray | None]:
        """Run the encoder on x, shape = (N, T, 80); return the decoder bound to its output, the step
        limit, and with timestamps or joint decoding the CTC log-probs, shape = (N, T', V), float32 (else None)."""
        enc = encode(self.pair, self.bound, x, frames, self.timestamps or self.decode.ctc_weight > 0)
        mask = cross_attention_mask(frames, enc.length) if len(set(frames.tolist())) > 1 else None
        maxlen = max_len or enc.length
        fixed = self.pair.fixed_cache_len
        if fixed is not None:
            maxlen = min(maxlen, fixed)  # a fixed cache holds at most `fixed` positions
        return open_decoder(self.pair, self.bound, enc, mask, fixed or maxlen + 1), maxlen, enc.ctc_log_probs


def _samples(audio: Audio, sample_rate: int | None, check: bool = True) -> np.ndarray:
    """A path or an array as 16 kHz int16-scale float32 samples, shape = (num_samples,)."""
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise OptimizeError("an audio array was given without its sample rate", "pass sample_rate=, e.g. 16000")
        samples = from_array(audio, sample_rate)
    else:
        samples = read_audio(audio)
    if check:
        check_length(len(samples), _name(audio))
    return samples


def _name(audio: Audio, index: int = 0) -> str:
    return f"array #{index}" if isinstance(audio, np.ndarray) else str(audio)
