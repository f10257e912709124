"""Error rates: CER for Mandarin, WER for English, and the mixed rate FireRedASR reports.

Normalization (`normalize`), applied to references and hypotheses alike:
1. Full-width forms become half-width (U+FF01..U+FF5E -> U+0021..U+007E, U+3000 -> space).
2. `<unk>` is deleted, as fireredasr/utils/wer.py does.
3. Upper-case (FireRedASR's vocabulary spells English upper-case).
4. Every punctuation or symbol character (Unicode category P* or S*) becomes a space, except
   the ASCII apostrophe, so DON'T stays one word while "A,B" becomes two.
5. Whitespace runs collapse to one space; leading/trailing space is stripped.

Tokens compared by the edit distance (unit costs for substitution, deletion, insertion):
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

from optimize.errors import OptimizeError

_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_CJK = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff])")
UNITS = {"zh": "char", "en": "word"}  # language code -> token unit of its per-language rate


@dataclass(frozen=True)
class ErrorStats:
    errors: int  # substitutions + deletions + insertions, summed over utterances
    ref_len: int  # reference tokens, summed over utterances
    rate: float = field(init=False)  # percent: 100 * errors / ref_len (ref_len 0 counts as 1)

    def __post_init__(self):
        object.__setattr__(self, "rate", 100.0 * self.errors / max(self.ref_len, 1))


def normalize(text: str) -> str:
    """The normalization in the module docstring."""
    text = text.translate(_FULL_WIDTH).replace("<unk>", " ").upper()
    text = "".join(" " if c != "'" and unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.split())


def tokenize(text: str, unit: str) -> list[str]:
    """Tokens of normalized text for unit "char", "word" or "mixed"."""
    if unit == "char":
        return list(text.replace(" ", ""))
    if unit == "word":
        return text.split()
    if unit == "mixed":
        return [tok for part in _CJK.split(text) for tok in ([part] if _CJK.fullmatch(part) else part.split())]
    raise ValueError(f"unknown unit {unit!r}")


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance with unit costs."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j - 1] + (r != h), prev[j] + 1, cur[j - 1] + 1))
        prev = cur
    return prev[-1]


def error_stats(refs: Sequence[str], hyps: Sequence[str], unit: str) -> ErrorStats:
    """Corpus error rate of raw texts under `normalize` and `tokenize(unit)`."""
    errors = ref_len = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = tokenize(normalize(ref), unit), tokenize(normalize(hyp), unit)
        errors += edit_distance(r, h)
        ref_len += len(r)
    return ErrorStats(errors, ref_len)


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
