"""Scoring speed: `evaluate.wer.score` on 10,000 utterance pairs of 60 s length, C vs pure Python.

Each pair is one 60 s utterance at FireRedASR-like speaking rates: Mandarin 270 characters
(4.5 per second), English 150 words (2.5 per second), half of each, with about 10% of the
tokens substituted, deleted or inserted. The edit distance alone is timed for three
implementations on the same token lists (rapidfuzz, editdistance, the former pure-Python
DP, the last on a subset and scaled), then the whole `score` (normalize + tokenize + S/D/I).

    python benchmarks/wer_benchmark.py [--pairs 10000] [--python-pairs 50]
"""

from __future__ import annotations

import argparse
import platform
import random
import time

from optimize.evaluate.wer import normalize, score, tokenize

ZH_CHARS, EN_WORDS = 270, 150  # 60 s of speech


def python_edit_distance(ref, hyp) -> int:
    """The DP `edit_distance` was before rapidfuzz: O(len(ref) * len(hyp)) Python steps."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j - 1] + (r != h), prev[j] + 1, cur[j - 1] + 1))
        prev = cur
    return prev[-1]


def _corrupt(tokens: list[str], vocab: list[str], rng: random.Random) -> list[str]:
    out = []
    for t in tokens:
        u = rng.random()
        if u < 0.06:
            out.append(rng.choice(vocab))  # substitution
        elif u < 0.08:
            continue  # deletion
        elif u < 0.10:
            out += [t, rng.choice(vocab)]  # insertion
        else:
            out.append(t)
    return out


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """n (reference, hypothesis, lang) triples of 60 s utterances, half zh, half en."""
    rng = random.Random(seed)
    zh_vocab = [chr(0x4E00 + i) for i in range(3000)]
    en_vocab = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    refs, hyps, langs = [], [], []
    for k in range(n):
        if k % 2 == 0:
            ref = [rng.choice(zh_vocab) for _ in range(ZH_CHARS)]
            refs.append("".join(ref)), hyps.append("".join(_corrupt(ref, zh_vocab, rng))), langs.append("zh")
        else:
            ref = [rng.choice(en_vocab) for _ in range(EN_WORDS)]
            refs.append(" ".join(ref)), hyps.append(" ".join(_corrupt(ref, en_vocab, rng))), langs.append("en")
    return refs, hyps, langs


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10000)
    ap.add_argument("--python-pairs", type=int, default=50, help="pairs the pure-Python DP is timed on (then scaled)")
    args = ap.parse_args()
    import editdistance
    from rapidfuzz.distance import Levenshtein

    refs, hyps, langs = make_pairs(args.pairs)
    units = {"zh": "char", "en": "word"}
    toks = [(tokenize(normalize(r), units[g]), tokenize(normalize(h), units[g])) for r, h, g in zip(refs, hyps, langs)]
    print(f"CPU: {platform.processor() or platform.machine()}; {args.pairs} pairs (zh {ZH_CHARS} chars / en {EN_WORDS} words each)")
    t_rf, d_rf = _timed(lambda: [Levenshtein.distance(r, h) for r, h in toks])
    t_ed, d_ed = _timed(lambda: [editdistance.eval(r, h) for r, h in toks])
    sub = toks[: args.python_pairs]
    t_py, d_py = _timed(lambda: [python_edit_distance(r, h) for r, h in sub])
    assert d_rf == d_ed and d_rf[: len(sub)] == d_py, "implementations disagree"
    t_py_all = t_py * len(toks) / len(sub)
    print(f"edit distance only: rapidfuzz {t_rf:.3f} s, editdistance {t_ed:.3f} s, "
          f"pure Python {t_py_all:.1f} s (scaled from {len(sub)} pairs: {1000 * t_py / len(sub):.1f} ms/pair)")  # fmt: skip
    print(f"speedup over pure Python: rapidfuzz {t_py_all / t_rf:.0f}x, editdistance {t_py_all / t_ed:.0f}x")
    t_score, out = _timed(lambda: score(refs, hyps, langs))
    rates = ", ".join(f"{k} {v.rate:.2f}% (S {v.substitutions} D {v.deletions} I {v.insertions})" for k, v in out.items())
    print(f"score() on {args.pairs} pairs (normalize, tokenize, per-language + mixed, S/D/I): {t_score:.2f} s; {rates}")


if __name__ == "__main__":
    main()
