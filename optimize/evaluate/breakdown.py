"""Error rates by manifest field and length bucket, and the utterances a stage changed.

Every manifest key (lang, condition, noise, voice, ...) is a field, plus `length`: the
utterance's duration in buckets (LENGTH_BUCKETS). `breakdown` scores each value of each asked
field on its own; `changed` lists the utterances whose text differs from the baseline's.
"""

from __future__ import annotations

from typing import Sequence

from optimize.errors import OptimizeError
from optimize.evaluate.wer import error_stats, score

LENGTH_BUCKETS = (2.0, 4.0, 8.0, 15.0, 30.0, 60.0)  # seconds: upper edges of the `length` buckets


def length_bucket(seconds: float) -> str:
    """The `length` field of an utterance: "<2 s", "2-4 s", ..., ">=60 s"."""
    lower = 0.0
    for edge in LENGTH_BUCKETS:
        if seconds < edge:
            return f"<{edge:g} s" if lower == 0 else f"{lower:g}-{edge:g} s"
        lower = edge
    return f">={LENGTH_BUCKETS[-1]:g} s"


def breakdown(refs: Sequence[str], hyps: Sequence[str], langs: Sequence[str], fields: Sequence[dict], by: Sequence[str]) -> list[dict]:
    """One row per (field, value): utterances, per-language and mixed rates in %, S/D/I of the mixed rate."""
    check_fields(fields, by)
    rows = []
    for key in by:
        values = sorted({str(f.get(key)) for f in fields}, key=_order)
        for value in values:
            picked = [i for i, f in enumerate(fields) if str(f.get(key)) == value]
            rates = score([refs[i] for i in picked], [hyps[i] for i in picked], [langs[i] for i in picked])
            mixed = rates["mixed"]
            rows.append({
                "field": key, "value": value, "utts": len(picked), "rates": {k: v.rate for k, v in rates.items()},
                "substitutions": mixed.substitutions, "deletions": mixed.deletions, "insertions": mixed.insertions,
            })  # fmt: skip
    return rows


def _order(value: str) -> tuple:
    """Length buckets by their lower edge, numbers by value, other values alphabetically."""
    head = value.lstrip("<>=").split("-")[0].split()[0] if value.strip("<>=- ") else value
    try:
        return (0, float(head) if not value.startswith("<") else -1.0, value)
    except ValueError:
        return (1, 0.0, value)


def check_fields(fields: Sequence[dict], by: Sequence[str]) -> None:
    """Raise OptimizeError naming a field of `by` that no utterance has, and the ones there are."""
    known = sorted({k for f in fields for k in f})
    missing = [key for key in by if key not in known]
    if missing:
        raise OptimizeError(f"no manifest field {', '.join(map(repr, missing))}", f"break down by one of {', '.join(known)}")


def changed(ids: Sequence[str], refs: Sequence[str], baseline: Sequence[str], hyps: Sequence[str]) -> list[dict]:
    """The utterances whose hypothesis differs from the baseline's, with the reference and both texts."""
    return [{"id": i, "reference": r, "baseline": b, "hypothesis": h} for i, r, b, h in zip(ids, refs, baseline, hyps) if b != h]


def counts(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Substitutions, deletions, insertions and reference tokens of the mixed rate."""
    s = error_stats(refs, hyps, "mixed")
    return {"substitutions": s.substitutions, "deletions": s.deletions, "insertions": s.insertions, "ref_len": s.ref_len}
