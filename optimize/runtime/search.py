"""Greedy and beam search over any decoder that implements the small `Inference` protocol.

The same two functions drive the ONNX Runtime pair (optimize.runtime.recognizer)
and, in the tests, the official PyTorch TransformerDecoder, so a token mismatch
points at the model, never at a second copy of the search.

Beam search reproduces fireredasr TransformerDecoder.batch_beam_search step by
step, in float32 like torch: log_softmax(logits / smoothing), EOS log-prob times
eos_penalty, top-B per row, finished rows pinned to one EOS candidate with score
+0 (the others -INF), top-B of the B*B sums per utterance, back-pointer
idx // B, GNMT length penalty ((5 + len) / 6) ** alpha where len counts the
leading sos, then sos and trailing eos stripped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from optimize.errors import OptimizeError
from optimize.runtime.ctc import PrefixScorer

# FireRedASR's "infinity" is finite on purpose: finished rows multiply scores by
# 0, and 0 * 1e10 stays 0 where 0 * inf would be nan.
INF = np.float32(1e10)
# Each beam repeats the cross K/V and both self-caches: at AED-L size and 60 s of audio,
# about 0.5 GB per beam and utterance. FireRedASR recommends 3; 100000 was OOM-killed.
MAX_BEAM_SIZE = 16
MAX_BATCH_SIZE = 256  # utterances per run; memory grows the same way
CTC_PRE_BEAM = 10  # joint decoding: attention's best tokens per row that the CTC prefix scorer rescores


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding options; the defaults are FireRedASR's recommended settings (its README)."""

    beam_size: int = 3  # hypotheses kept per utterance; 1 = greedy (same tokens as FireRedASR beam 1)
    softmax_smoothing: float = 1.25  # logits are divided by this before log_softmax
    length_penalty: float = 0.6  # GNMT alpha applied to final beam scores; 0 disables it
    eos_penalty: float = 1.0  # multiplies the EOS log-prob; > 0 (FireRedASR2 allows > 1, v1 asserted <= 1); < 1 favours ending
    max_len: int = 0  # most decoder steps; 0 = the batch's padded encoder length T', as FireRedASR
    batch_size: int = 1  # utterances per encoder/decoder run (> 1 needs a pair with cross_attn_mask)
    # joint CTC/attention decoding: each candidate scores (1 - w) x attention + w x CTC prefix
    # log-prob (needs a pair with a CTC head); 0 = attention only, FireRedASR's own search;
    # None = the pair's recommendation (encoder metadata ctc_weight), else 0
    ctc_weight: float | None = None

    def __post_init__(self):
        fix = (f"use 1 <= beam_size <= {MAX_BEAM_SIZE} (FireRedASR recommends 3; memory grows with each beam), "
               f"1 <= batch_size <= {MAX_BATCH_SIZE}, max_len >= 0, softmax_smoothing > 0, eos_penalty > 0, length_penalty >= 0, "
               "0 <= ctc_weight <= 1")
        bad = {
            "beam_size": not 1 <= self.beam_size <= MAX_BEAM_SIZE,
            "batch_size": not 1 <= self.batch_size <= MAX_BATCH_SIZE,
            "max_len": self.max_len < 0,
            "softmax_smoothing": not self.softmax_smoothing > 0,
            "eos_penalty": not self.eos_penalty > 0,
            "length_penalty": self.length_penalty < 0,
            "ctc_weight": self.ctc_weight is not None and not 0 <= self.ctc_weight <= 1,
        }
        names = [name for name, is_bad in bad.items() if is_bad]
        if names:
            values = ", ".join(f"{n}={getattr(self, n)}" for n in names)
            raise OptimizeError(f"invalid decode options {values}", fix)


class Inference(Protocol):
    """A decoder bound to one encoded batch of N utterances."""

    def start(self, beam: int) -> None:
        """Reset to step 0 with `beam` rows per utterance: rows = N * beam, row n * beam + b."""

    def step(self, tokens: np.ndarray, offset: int) -> np.ndarray:
        """Feed tokens, shape = (rows,), int64, at position `offset`; return logits, shape = (rows, V), float32."""

    def reorder(self, rows: np.ndarray) -> None:
        """Make old row rows[i] the new row i; rows shape = (rows,), int64."""


class Decoded(NamedTuple):
    tokens: tuple[int, ...]  # token ids without sos/eos
    score: float  # greedy: summed log-probs incl. eos; beam: FireRedASR's final, length-penalized score


def search(model: Inference, n: int, maxlen: int, cfg: DecodeConfig, sos: int, eos: int) -> list[tuple[int, ...]]:
    """Decode N utterances: greedy for beam_size 1, else beam search. Returns token ids without sos/eos."""
    return [d.tokens for d in search_scored(model, n, maxlen, cfg, sos, eos)]


def search_scored(model: Inference, n: int, maxlen: int, cfg: DecodeConfig, sos: int, eos: int, ctc: PrefixScorer | None = None) -> list[Decoded]:
    """`search` with each hypothesis's score; with cfg.ctc_weight > 0, joint decoding with `ctc`'s prefix scores."""
    if cfg.ctc_weight:
        if ctc is None:
            raise OptimizeError(f"ctc_weight {cfg.ctc_weight} needs the CTC head's log-probs", "decode with a pair that has a CTC head, or ctc_weight 0")
        return beam_search(model, n, maxlen, cfg, sos, eos, ctc)
    if cfg.beam_size == 1:
        return greedy_search(model, n, maxlen, cfg, sos, eos)
    return beam_search(model, n, maxlen, cfg, sos, eos)


def log_probs(logits: np.ndarray, cfg: DecodeConfig, eos: int) -> np.ndarray:
    """log_softmax(logits / smoothing) with the EOS penalty; shape = (rows, V), float32."""
    x = logits.astype(np.float32, copy=False) / np.float32(cfg.softmax_smoothing)
    x = x - x.max(axis=1, keepdims=True)
    out = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    if cfg.eos_penalty != 1.0:
        out[:, eos] *= np.float32(cfg.eos_penalty)
    return out


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest k per row, largest first: (values, indices), each shape = (rows, k).

    Equal values come out lowest index first (a stable sort on -x). torch.topk
    does not document its tie order, so exact float32 ties are the one place the
    search may pick differently from FireRedASR.
    """
    if k < x.shape[1]:
        # Partition first: a full sort of every 8k-wide row would cost more than a decoder step.
        part = np.sort(np.argpartition(-x, k - 1, axis=1)[:, :k], axis=1)
        vals = np.take_along_axis(x, part, axis=1)
        if (np.count_nonzero(x >= vals.min(axis=1, keepdims=True), axis=1) == k).all():
            order = np.argsort(-vals, axis=1, kind="stable")
            return np.take_along_axis(vals, order, axis=1), np.take_along_axis(part, order, axis=1)
    # A tie straddles the k-th place: sort the whole row so the lower index wins.
    idx = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


def greedy_search(model: Inference, n: int, maxlen: int, cfg: DecodeConfig, sos: int, eos: int) -> list[Decoded]:
    """Argmax per row until every row has produced eos or maxlen steps ran."""
    model.start(1)
    tokens = np.full(n, sos, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    out: list[list[int]] = [[] for _ in range(n)]
    score = np.zeros(n, dtype=np.float64)
    for t in range(maxlen):
        lp = log_probs(model.step(tokens, t), cfg, eos)
        tokens = np.argmax(lp, axis=1).astype(np.int64)
        score[~done] += lp[~done, tokens[~done]]  # rows count their own eos, nothing after it
        tokens[done] = eos  # finished rows keep stepping (the batch moves together) but stay finished
        done |= tokens == eos
        for i in np.flatnonzero(~done):
            out[i].append(int(tokens[i]))
        if done.all():
            break
    return [Decoded(tuple(seq), float(sc)) for seq, sc in zip(out, score)]


def beam_search(model: Inference, n: int, maxlen: int, cfg: DecodeConfig, sos: int, eos: int, ctc: PrefixScorer | None = None) -> list[Decoded]:
    """FireRedASR's batch beam search; returns the best hypothesis per utterance.

    With `ctc` (cfg.ctc_weight > 0) each row's candidates are its CTC_PRE_BEAM best tokens by
    attention, rescored (1 - w) x attention + w x CTC prefix log-prob before its top-B; the
    rest of the search is FireRedASR's (ESPnet's joint decoding in FireRedASR's beam).
    """
    b = cfg.beam_size
    rows = n * b
    model.start(b)
    pinned = np.array([0.0] + [-INF] * (b - 1), dtype=np.float32)  # one live candidate per finished row
    ys = np.full((rows, 1), sos, dtype=np.int64)
    scores = np.tile(pinned, n).reshape(rows, 1)  # only beam 0 of each utterance expands at step 0
    finished = np.zeros(rows, dtype=bool)
    row_base = (b * np.arange(n, dtype=np.int64)).repeat(b)
    for t in range(maxlen):
        att = log_probs(model.step(ys[:, -1], t), cfg, eos)
        if ctc is None:
            cand_scores, cand_tokens = topk(att, b)
        else:
            pre_scores, pre_tokens = topk(att, min(att.shape[1], max(CTC_PRE_BEAM, b)))
            w = np.float32(cfg.ctc_weight)
            cand_scores, picks = topk((1 - w) * pre_scores + w * ctc.score(pre_tokens), b)
            cand_tokens = np.take_along_axis(pre_tokens, picks, axis=1)
        cand_scores[finished] = pinned
        cand_tokens[finished] = eos
        total = (scores + cand_scores).reshape(n, b * b)
        best_scores, best = topk(total, b)
        scores = best_scores.reshape(rows, 1)
        parents = (best // b).reshape(rows) + row_base
        new_tokens = np.take_along_axis(cand_tokens.reshape(n, b * b), best, axis=1).reshape(rows, 1)
        ys = np.concatenate([ys[parents], new_tokens], axis=1)
        model.reorder(parents)
        if ctc is not None:
            ctc.advance(parents, np.take_along_axis(picks.reshape(n, b * b), best, axis=1).reshape(rows), new_tokens[:, 0])
        finished = new_tokens[:, 0] == eos
        if finished.all():
            break
    return _best_hypotheses(ys, scores, n, b, cfg, eos)


def _best_hypotheses(ys: np.ndarray, scores: np.ndarray, n: int, b: int, cfg: DecodeConfig, eos: int) -> list[Decoded]:
    """GNMT length penalty, top-1 per utterance, strip sos and trailing eos."""
    lengths = np.count_nonzero(ys != eos, axis=1)  # includes the leading sos, as FireRedASR counts
    scores = scores.reshape(n, b)
    if cfg.length_penalty > 0:
        penalty = ((np.float32(5) + lengths.astype(np.float32)) / np.float32(6)) ** np.float32(cfg.length_penalty)
        scores = scores / penalty.reshape(n, b)
    best = np.argmax(scores, axis=1) + b * np.arange(n)
    flat = scores.reshape(-1)
    return [Decoded(tuple(int(tok) for tok in ys[r, 1 : lengths[r]]), float(flat[r])) for r in best]
