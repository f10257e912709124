"""Numeric parity of one pair against a reference pair, on a few probe inputs.

For each probe the reference runs the encoder and a greedy decode, recording the
logits of every step. The pair under test then runs the encoder (cross K/V compared
by relative error), a teacher-forced decode along the reference's tokens (logits
compared by cosine, step by step: this stays meaningful after the first differing
token, and for random-weight models), and its own greedy decode (tokens compared).
With `forced`, greedy never emits eos and runs exactly `steps` steps: random-weight
models rarely stop, and a fixed length makes the token comparison well defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimize.errors import OptimizeError
from optimize.runtime.binding import BoundPair
from optimize.runtime.inference import Encoded, SuppressEos, encode, from_host, open_decoder, step_one
from optimize.runtime.search import Inference
from optimize.runtime.session import OrtPair


@dataclass(frozen=True)
class ProbeRun:
    """What one pair computes for one probe."""

    cross_k: np.ndarray  # shape = (L, 1, T', D), float32
    cross_v: np.ndarray  # shape = (L, 1, T', D), float32
    tokens: tuple[int, ...]  # greedy tokens, without sos and eos
    logits: np.ndarray  # shape = (steps run, V), float32; row i follows input token i (row 0: sos)


@dataclass(frozen=True)
class Parity:
    """A pair against a reference; worst case over the probes unless stated."""

    cross_kv_rel_error: float  # max of ||a - b|| / ||b|| over cross K and cross V
    first_logits_cosine: float  # min cosine of the first-step logits (after sos)
    teacher_forced_cosine: float  # min cosine of the logits over all teacher-forced steps
    greedy_identical: float  # fraction of probes whose greedy tokens equal the reference's
    greedy_prefix: float  # mean fraction of the reference's tokens matched before the first difference


def _decoder(pair: OrtPair, bound: BoundPair | None, enc: Encoded, steps: int) -> tuple[Inference, int]:
    """The probe's decoder (numpy or IOBinding path) and its step limit (a fixed cache caps it)."""
    cache_len = pair.fixed_cache_len or steps + 1
    return open_decoder(pair, bound, enc, None, cache_len), min(steps, cache_len)


def run_probe(pair: OrtPair, feats: np.ndarray, steps: int, forced: bool, bound: BoundPair | None = None) -> ProbeRun:
    """Encode one utterance and decode it greedily (eos suppressed when `forced`). feats: shape = (T, 80), float32."""
    info = pair.info
    enc = encode(pair, bound, feats[None].astype(np.float32), np.array([len(feats)], dtype=np.int64))
    model, limit = _decoder(pair, bound, enc, steps)
    tokens, logits = step_one(model, info.sos, info.eos, limit, None, SuppressEos(info.eos) if forced else None)
    cross_k, cross_v = enc.host()
    for name, a in (("cross K", cross_k), ("cross V", cross_v), ("logits", logits)):
        if not np.isfinite(a).all():
            raise OptimizeError(f"{name} hold NaN or inf on a {len(feats)}-frame probe", "the stage broke the numerics; inspect or skip it")
    return ProbeRun(cross_k, cross_v, tuple(tokens), logits)


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of a and b, shape = (rows,)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _prefix(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return n / max(len(b), 1) if a != b else 1.0


def compare(pair: OrtPair, probes: list[np.ndarray], references: list[ProbeRun], steps: int, forced: bool, bound: BoundPair | None = None) -> tuple[Parity, list[ProbeRun]]:
    """Parity of `pair` (through `bound` when given) against the reference runs; also returns the pair's own runs."""
    runs, rel, first, forced_cos, prefix = [], [], [], [], []
    info = pair.info
    for feats, ref in zip(probes, references, strict=True):
        run = run_probe(pair, feats, steps, forced, bound)
        runs.append(run)
        rel += [_rel_error(run.cross_k, ref.cross_k), _rel_error(run.cross_v, ref.cross_v)]
        feed = ([info.sos, *ref.tokens])[: len(ref.logits)]
        model, _ = _decoder(pair, bound, from_host(bound, run.cross_k, run.cross_v), steps)
        _, teacher = step_one(model, info.sos, info.eos, len(feed), feed)
        cos = _cosines(teacher, ref.logits)
        first.append(cos[0])
        forced_cos.append(cos.min())
        prefix.append(_prefix(run.tokens, ref.tokens))
    identical = sum(r.tokens == ref.tokens for r, ref in zip(runs, references)) / len(runs)
    parity = Parity(max(rel), float(min(first)), float(min(forced_cos)), identical, float(np.mean(prefix)))
    return parity, runs


def synthetic_probes(count: int, frames: tuple[int, ...] = (150, 420, 730, 1010), seed: int = 0) -> list[np.ndarray]:
    """Stand-in probes when no eval data is given: CMVN-normalized features are about N(0, 1).

    returns `count` arrays, shape = (T, 80), float32, cycling through `frames`.
    """
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((frames[i % len(frames)], 80)).astype(np.float32) for i in range(count)]
