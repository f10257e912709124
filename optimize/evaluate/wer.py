"""Error rates: CER for Mandarin, WER for English, and the mixed rate FireRedASR reports.

Normalization (`normalize`), applied to references and hypotheses alike:
1. Full-width forms become half-width (U+FF01..U+FF5E -> U+0021..U+007E, U+3000 -> space).
2. `<unk>` is deleted, as fireredasr/utils/wer.py does.
3. Upper-case (FireRedASR's vocabulary spells English upper-case).
4. Every punctuation or symbol character (Unicode category P* or S*) becomes a space, except
   the ASCII apostrophe, so DON'T stays one word while "A,B" becomes two.
5. Whitespace runs collapse to one space; leading/trailing space is stripped.

Tokens compared by the edit distance (unit costs for substitution, deletion, insertion; computed
by rapidfuzz's C++ Levenshtein, which takes token lists as well as strings):
- "char" (CER, used for Mandarin): every character of the normalized text, spaces removed.
- "word" (WER, used for English): whitespace-separated words.
- "mixed" (the FireRedASR number, fireredasr/utils/wer.py text2tokens): each CJK ideograph is a
  token and every other run is split into words. CJK here is U+4E00..U+9FFF plus extension A
  U+3400..U+4DBF (the FireRedASR tokenizer's range; its wer.py leaves extension A out).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

from rapidfuzz.distance import Levenshtein

from optimize.errors import OptimizeError

_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
# "mixed" tokens: one CJK ideograph, or a run of anything else up to a space or an ideograph
_MIXED_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|[^\s\u3400-\u4dbf\u4e00-\u9fff]+")
UNITS = {"zh": "char", "en": "word"}  # language code -> token unit of its per-language rate


@dataclass(frozen=True)
class ErrorStats:
    errors: int  # substitutions + deletions + insertions, summed over utterances
    ref_len: int  # reference tokens, summed over utterances
    substitutions: int = 0  # of one minimal alignment per utterance (the split is not unique, the sum is)
    deletions: int = 0  # reference tokens missing from the hypothesis
    insertions: int = 0  # hypothesis tokens not in the reference
    rate: float = field(init=False)  # percent: 100 * errors / ref_len (ref_len 0 counts as 1)

    def __post_init__(self):
        object.__setattr__(self, "rate", 100.0 * self.errors / max(self.ref_len, 1))


class _PunctuationToSpace(dict):
    """str.translate table for step 4, filled per code point on first sight (a per-character
    Python loop over unicodedata costs more than the C edit distance on long texts)."""

    def __missing__(self, code: int) -> str:
        c = chr(code)
        self[code] = " " if c != "'" and unicodedata.category(c)[0] in "PS" else c
        return self[code]


_PUNCTUATION = _PunctuationToSpace()


def normalize(text: str) -> str:
    """The normalization in the module docstring."""
    text = text.translate(_FULL_WIDTH).replace("<unk>", " ").upper()
    return " ".join(text.translate(_PUNCTUATION).split())


def tokenize(text: str, unit: str) -> list[str]:
    """Tokens of normalized text for unit "char", "word" or "mixed"."""
    if unit == "char":
        return list(text.replace(" ", ""))
    if unit == "word":
        return text.split()
    if unit == "mixed":
        return _MIXED_TOKEN.findall(text)
    raise ValueError(f"unknown unit {unit!r}")


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance with unit costs between two token sequences."""
    return Levenshtein.distance(ref, hyp)


def edit_counts(ref: Sequence, hyp: Sequence) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of one minimal alignment of hyp to ref."""
    ops = [op for op, _, _ in Levenshtein.editops(ref, hyp).as_list()]
    return ops.count("replace"), ops.count("delete"), ops.count("insert")


def error_stats(refs: Sequence[str], hyps: Sequence[str], unit: str) -> ErrorStats:
    """Corpus error rate of raw texts under `normalize` and `tokenize(unit)`."""
    sub = dele = ins = ref_len = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = tokenize(normalize(ref), unit), tokenize(normalize(hyp), unit)
        s, d, i = edit_counts(r, h)
        sub, dele, ins, ref_len = sub + s, dele + d, ins + i, ref_len + len(r)
    return ErrorStats(sub + dele + ins, ref_len, sub, dele, ins)


def score(refs: Sequence[str], hyps: Sequence[str], langs: Sequence[str]) -> dict[str, ErrorStats]:
    """Per-language rates (zh: CER, en: WER) for the languages present, plus "mixed" over everything."""
    if not len(refs) == len(hyps) == len(langs):
        raise OptimizeError(
            f"{len(refs)} references, {len(hyps)} hypotheses and {len(langs)} languages", "pass one of each per utterance"
        )
    unknown = sorted(set(langs) - set(UNITS))
    if unknown:
        raise OptimizeError(f"unknown language code(s) {', '.join(unknown)}", f"use one of {', '.join(UNITS)}")
    out = {}
    for lang in sorted(set(langs)):
        picked = [i for i, code in enumerate(langs) if code == lang]
        out[lang] = error_stats([refs[i] for i in picked], [hyps[i] for i in picked], UNITS[lang])
    out["mixed"] = error_stats(refs, hyps, "mixed")
    return out
