"""tokens.txt (`symbol id` per line, as sherpa-onnx writes it) and FireRedASR detokenization.

Detokenization follows fireredasr/tokenizer/aed_tokenizer.py: join the symbols
with "", turn the SentencePiece word mark `▁` into a space, strip. Chinese
characters therefore join without spaces and English words come out upper-case
(that is how the vocabulary spells them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optimize.errors import OptimizeError

SPM_SPACE = "\u2581"  # "▁"


@dataclass(frozen=True)
class TokenTable:
    """id -> symbol; `symbols[i]` is the symbol of id i."""

    symbols: tuple[str, ...]

    @classmethod
    def read(cls, path: str | Path) -> "TokenTable":
        """Parse tokens.txt; ids must cover 0..V-1 exactly once.

        A line holding only an id is the space symbol (as in FireRedASR's dict.txt).
        """
        path = Path(path)
        fix = "write tokens.txt as `symbol id` lines (optimize export does)"
        table: dict[int, str] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise OptimizeError(f"{path} is not UTF-8 (byte {e.start}: {e.object[e.start:e.start + 4]!r})", "re-save tokens.txt as UTF-8, as optimize export writes it") from e
        for lineno, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            symbol = fields[0] if len(fields) == 2 else " "
            if len(fields) > 2 or not fields[-1].lstrip("-").isdigit():
                raise OptimizeError(f"{path}:{lineno} is not `symbol id`: {line!r}", fix)
            idx = int(fields[-1])
            if idx in table:
                raise OptimizeError(f"{path}:{lineno} repeats id {idx}", fix)
            table[idx] = symbol
        if sorted(table) != list(range(len(table))):
            raise OptimizeError(f"{path} ids are not 0..{len(table) - 1} without gaps", fix)
        return cls(tuple(table[i] for i in range(len(table))))

    def __len__(self) -> int:
        return len(self.symbols)

    def detokenize(self, ids) -> str:
        """Text of a token-id sequence (sos/eos already stripped by the search)."""
        return "".join(self.symbols[i] for i in ids).replace(SPM_SPACE, " ").strip()
