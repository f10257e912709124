"""The one decode driver: encode, bind a decoder to the encoding, step it.

Everything that decodes an ORT pair comes through here: the recognizer's searches
(runtime/search.py drives an `Inference`), the evaluation's parity probes (greedy and
teacher-forced, evaluate/parity.py), on the numpy path (`OrtInference`) or the
IOBinding path (`binding.BoundInference`) that ships on CUDA. Whisper's seams: an
`Inference` with start/step/reorder, a logit filter with one method, one loop.

Shapes as in optimize.runtime.session: N rows, T' encoder frames, L layers, D = H x Dh,
S the self-cache length, V the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from optimize.runtime.binding import BoundInference, BoundPair
from optimize.runtime.search import Inference
from optimize.runtime.session import OrtPair


@dataclass(frozen=True)
class Encoded:
    """One encoded batch: cross K/V as numpy arrays (numpy path) or device OrtValues (IOBinding)."""

    cross_k: object  # shape = (L, N, T', D), float32
    cross_v: object  # shape = (L, N, T', D), float32
    length: int  # T'
    ctc_log_probs: np.ndarray | None = None  # shape = (N, T', V), float32, when asked and the pair has a CTC head

    def host(self) -> tuple[np.ndarray, np.ndarray]:
        """cross K/V as numpy arrays (a copy from the device on the IOBinding path)."""
        if isinstance(self.cross_k, np.ndarray):
            return self.cross_k, self.cross_v  # type: ignore[return-value]
        return self.cross_k.numpy(), self.cross_v.numpy()  # type: ignore[attr-defined]


def encode(pair: OrtPair, bound: BoundPair | None, x: np.ndarray, frames: np.ndarray, with_ctc: bool = False) -> Encoded:
    """x: shape = (N, T, 80), float32, zero-padded; frames: shape = (N,), int64. Through `bound` when given."""
    runner = pair if bound is None else bound
    log_probs = None
    if with_ctc:
        cross_k, cross_v, log_probs = runner.encode_with_ctc(x, frames)
    else:
        cross_k, cross_v = runner.encode(x, frames)
    length = cross_k.shape[2] if bound is None else cross_k.shape()[2]
    return Encoded(cross_k, cross_v, int(length), log_probs)


def from_host(bound: BoundPair | None, cross_k: np.ndarray, cross_v: np.ndarray) -> Encoded:
    """An encoding kept on the host (a ProbeRun's), for the path `bound` selects: copied to its device when bound."""
    if bound is None:
        return Encoded(cross_k, cross_v, cross_k.shape[2])
    return Encoded(bound.to_device(cross_k), bound.to_device(cross_v), cross_k.shape[2])


def open_decoder(pair: OrtPair, bound: BoundPair | None, enc: Encoded, mask: np.ndarray | None, cache_len: int) -> Inference:
    """The decoder bound to `enc`: the IOBinding path when `bound`, else the numpy path."""
    if bound is None:
        return OrtInference(pair, enc.cross_k, enc.cross_v, mask, cache_len)  # type: ignore[arg-type]
    return BoundInference(bound, enc.cross_k, enc.cross_v, mask, cache_len)  # type: ignore[arg-type]


class LogitFilter(Protocol):
    def apply(self, logits: np.ndarray) -> np.ndarray:
        """logits: shape = (rows, V), float32 -> the logits the next token is chosen from."""


class SuppressEos:
    """Never choose eos: random-weight models then decode a fixed number of steps (parity_only probes)."""

    def __init__(self, eos: int):
        self.eos = eos

    def apply(self, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[:, self.eos] = -np.inf
        return out


def step_one(model: Inference, sos: int, eos: int, steps: int, feed: list[int] | None = None, logit_filter: LogitFilter | None = None) -> tuple[list[int], np.ndarray]:
    """Greedy (feed None) or teacher-forced (feed = the input tokens, sos first) decode of one row.

    Greedy stops at eos (never chosen under SuppressEos) or after `steps`; teacher forcing runs
    len(feed) steps. returns (argmax tokens, without eos; logits shape = (steps run, V), float32,
    unfiltered: row i follows input token i).
    """
    model.start(1)
    token, chosen, rows = sos, [], []
    for offset in range(len(feed) if feed is not None else steps):
        if feed is not None:
            token = feed[offset]
        logits = model.step(np.array([token], dtype=np.int64), offset).astype(np.float32)
        rows.append(logits[0])
        token = int(np.argmax((logits if logit_filter is None else logit_filter.apply(logits))[0]))
        if token == eos and feed is None:
            break
        chosen.append(token)
    return chosen, np.stack(rows)


class OrtInference:
    """The search's Inference protocol over an OrtPair, bound to one encoded batch.

    cross_k, cross_v: shape = (L, N, T', D), float32, from OrtPair.encode.
    cross_mask: shape = (N, 1, 1, T'), float32 additive mask, or None when all rows are valid.
    cache_len: self-cache length S (the fixed dim of a v1 pair, else max steps + 1).
    """

    def __init__(self, pair: OrtPair, cross_k: np.ndarray, cross_v: np.ndarray, cross_mask: np.ndarray | None, cache_len: int):
        self.pair = pair
        self._enc = (cross_k, cross_v, cross_mask)
        self.cache_len = cache_len

    def start(self, beam: int) -> None:
        # Row n * beam + b holds beam b of utterance n, as torch's repeat(1, B, 1, 1).view(N * B, ...).
        # A decoder that takes cross K/V per utterance (OrtPair.cross_per_utterance) shares them instead.
        cross_k, cross_v, mask = self._enc
        repeat = beam if beam > 1 and not (self.pair.cross_per_utterance and self.pair.max_decoder_rows is None) else 1
        self._cross_k = np.repeat(cross_k, repeat, axis=1) if repeat > 1 else cross_k
        self._cross_v = np.repeat(cross_v, repeat, axis=1) if repeat > 1 else cross_v
        self._mask = None if mask is None else np.repeat(mask, repeat, axis=0)
        rows = cross_k.shape[1] * beam
        self._cross_feed = self.pair.cross_inputs(self._cross_k, self._cross_v)  # once per search, not per step
        self._k = self.pair.empty_cache(rows, self.cache_len)
        self._v = self.pair.empty_cache(rows, self.cache_len)
        self._filled = 0

    def step(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        """tokens: shape = (rows,), int64 -> logits, shape = (rows, V), float32."""
        if self.pair.max_decoder_rows is not None and len(tokens) > self.pair.max_decoder_rows:
            logits = self._step_rows_singly(tokens, offset)
        else:
            logits, self._k, self._v = self.pair.decoder_step(
                tokens.reshape(-1, 1), self._k, self._v, self._cross_k, self._cross_v, offset, self._mask, self._cross_feed
            )
        self._filled = offset + 1
        return logits[:, 0, :]

    def _step_rows_singly(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        # Published v1 decoders fix the batch dim at 1: run beam rows one by one.
        outs = [
            self.pair.decoder_step(
                tokens[r : r + 1].reshape(1, 1),
                self._k[:, r : r + 1],
                self._v[:, r : r + 1],
                self._cross_k[:, r : r + 1],
                self._cross_v[:, r : r + 1],
                offset,
                None if self._mask is None else self._mask[r : r + 1],
            )
            for r in range(len(tokens))
        ]
        self._k = np.concatenate([o[1] for o in outs], axis=1)
        self._v = np.concatenate([o[2] for o in outs], axis=1)
        return np.concatenate([o[0] for o in outs], axis=0)

    def reorder(self, rows: np.ndarray) -> None:
        if np.array_equal(rows, np.arange(len(rows))):
            return
        # Only positions < _filled are ever read, so copy just that prefix (the rest may be S long).
        n = self._filled
        self._k[:, :, :n] = self._k[:, rows, :n]
        self._v[:, :, :n] = self._v[:, rows, :n]


class Filtered:
    """An Inference whose logits pass through `logit_filter` before the search sees them.

    With SuppressEos the recognizer's own searches (greedy, beam with its top-k and cache
    reorders) run exactly max_len steps on any model: what `optimize bench` times.
    """

    def __init__(self, model: Inference, logit_filter: LogitFilter):
        self.model = model
        self.logit_filter = logit_filter

    def start(self, beam: int) -> None:
        self.model.start(beam)

    def step(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        return self.logit_filter.apply(self.model.step(tokens, offset))

    def reorder(self, rows: np.ndarray) -> None:
        self.model.reorder(rows)
