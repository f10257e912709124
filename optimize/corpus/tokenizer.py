"""FireRedASR's tokenizer: one token per Chinese character, SentencePiece pieces for everything else.

`Tokenizer.encode` reproduces `ChineseCharEnglishSpmTokenizer.tokenize` of FireRedASR
(fireredasr/tokenizer/aed_tokenizer.py) and `decode` its `detokenize`; tests/test_tokenizer.py checks
the parity against the installed `fireredasr` package. The dict.txt format follows its `TokenDict`
(fireredasr/data/token_dict.py): `token id` per line, id equal to the line index.

`build_tokenizer` writes a dict.txt laid out as FireRedASR's: the special tokens of SPECIALS, then the
Chinese characters of the training text (by code point), then the English BPE pieces (by
SentencePiece id), and `train_bpe.model` beside it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from optimize.errors import OptimizeError

# FireRedASR's special tokens and ids (blank for CTC, pad, sos/eos for the attention decoder).
SPECIALS = ("<blank>", "<unk>", "<pad>", "<sos>", "<eos>")
UNK = "<unk>"
SPM_SPACE = "\u2581"  # "▁", SentencePiece's word-start mark
DICT_NAME = "dict.txt"
SPM_NAME = "train_bpe.model"

_PUNCTUATION = re.compile(r"[，。？！,.?!]")  # replaced by spaces before splitting, as FireRedASR does
_CJK_CHAR = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff])")  # capturing: re.split keeps the characters


def _read_dict(path: Path) -> list[str]:
    """id -> token list of a FireRedASR dict.txt."""
    tokens = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f):
            fields = line.strip().split()
            token = fields[0] if fields else " "  # TokenDict maps blank lines to a space
            index = int(fields[1]) if len(fields) >= 2 else number
            if index != number:
                raise OptimizeError(f"{path}:{number + 1}: id {index} is not the line index {number}",
                                    "dict.txt ids must run 0, 1, 2, ... in file order")
            tokens.append(" " if token == "<space>" else token)
    return tokens


class Tokenizer:
    """Text <-> token ids with a FireRedASR dict.txt and SentencePiece model."""

    def __init__(self, dict_path: Path | str, spm_path: Path | str):
        import sentencepiece

        self.dict_path, self.spm_path = Path(dict_path), Path(spm_path)
        for path, what in ((self.dict_path, "dict.txt"), (self.spm_path, "SentencePiece model")):
            if not path.is_file():
                raise OptimizeError(f"{what} {path} does not exist",
                                    "build it with `python -m optimize.corpus tokenizer`")
        self.id_to_token = _read_dict(self.dict_path)
        self.token_to_id = {t: i for i, t in enumerate(self.id_to_token)}
        if UNK not in self.token_to_id:
            raise OptimizeError(f"{self.dict_path} has no {UNK} token", f"add `{UNK} 1` as FireRedASR's dict.txt has")
        self.unk_id = self.token_to_id[UNK]
        self.sp = sentencepiece.SentencePieceProcessor()
        self.sp.Load(str(self.spm_path))

    def __len__(self) -> int:
        return len(self.id_to_token)

    def tokens(self, text: str) -> list[str]:
        """Token strings of `text`: upper-case, punctuation to spaces, CJK characters, then BPE pieces."""
        text = _PUNCTUATION.sub(" ", text.upper())
        tokens = []
        for part in _CJK_CHAR.split(text.strip()):
            if not part.strip():
                continue
            if _CJK_CHAR.fullmatch(part):
                tokens.append(part)
            else:
                tokens.extend(self.sp.EncodeAsPieces(part.strip()))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; tokens missing from dict.txt become <unk>."""
        return [self.token_to_id.get(t, self.unk_id) for t in self.tokens(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Concatenate the tokens of `ids`, turn "▁" into spaces and strip (sos/eos are not removed)."""
        return "".join(self.id_to_token[int(i)] for i in ids).replace(SPM_SPACE, " ").strip()


def _english_runs(texts: Iterable[str]) -> list[str]:
    """The non-CJK runs of the normalised texts: what FireRedASR passes to SentencePiece."""
    runs = []
    for text in texts:
        for part in _CJK_CHAR.split(_PUNCTUATION.sub(" ", text.upper()).strip()):
            if part.strip() and not _CJK_CHAR.fullmatch(part):
                runs.append(part.strip())
    return runs


def _train_spm(runs: list[str], prefix: Path, vocab_size: int) -> None:
    import sentencepiece

    if not runs:
        raise OptimizeError("the training text has no English", "build the tokenizer from a bilingual training set")
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(runs),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="bpe",  # FireRedASR ships train_bpe1000.model
            character_coverage=1.0,  # keep every letter, so no English word maps to <unk>
            num_threads=1,  # single-threaded training is reproducible
            minloglevel=2,  # warnings and errors only
        )
    except RuntimeError as e:
        raise OptimizeError(f"SentencePiece training failed: {e}",
                            "lower --spm-vocab-size (it must not exceed what the English text supports)") from e


def build_tokenizer(texts: Sequence[str], out_dir: Path | str, spm_vocab_size: int = 300) -> Tokenizer:
    """Write dict.txt and train_bpe.model for `texts` (training transcripts) into `out_dir`."""
    import sentencepiece

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for t in texts for c in t if _CJK_CHAR.fullmatch(c)})
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        prefix = Path(tmp) / "train_bpe"
        _train_spm(_english_runs(texts), prefix, spm_vocab_size)
        sp = sentencepiece.SentencePieceProcessor()
        sp.Load(str(prefix) + ".model")
        # SentencePiece's own <unk>, <s>, </s> are left out: dict.txt has its own specials.
        pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())
                  if not (sp.IsUnknown(i) or sp.IsControl(i) or sp.IsUnused(i))]
        vocab = list(SPECIALS) + chars + pieces
        (Path(tmp) / DICT_NAME).write_text("".join(f"{t} {i}\n" for i, t in enumerate(vocab)), encoding="utf-8")
        os.replace(str(prefix) + ".model", out_dir / SPM_NAME)
        os.replace(Path(tmp) / DICT_NAME, out_dir / DICT_NAME)
    return Tokenizer(out_dir / DICT_NAME, out_dir / SPM_NAME)


def unknown_tokens(tokenizer: Tokenizer, texts: Iterable[str]) -> set[str]:
    """Tokens of `texts` that dict.txt lacks (they would encode as <unk>)."""
    return {t for text in texts for t in tokenizer.tokens(text) if t not in tokenizer.token_to_id}


def build_from_manifests(train: Sequence[Path], out_dir: Path, spm_vocab_size: int,
                         check: Sequence[Path] = ()) -> tuple[Tokenizer, str]:
    """Build from the transcripts of `train` manifests; every text of `check` must encode without <unk>."""
    from optimize.corpus.manifest import read_manifest

    texts = [u.text for path in train for u in read_manifest(path)]
    tokenizer = build_tokenizer(texts, out_dir, spm_vocab_size)
    checked = [u.text for path in check for u in read_manifest(path)]
    missing = unknown_tokens(tokenizer, checked)
    if missing:
        raise OptimizeError(f"{len(missing)} token(s) of the --check text are not in the training text: "
                            f"{' '.join(sorted(missing)[:20])}", "generate more training utterances")
    n_chars = sum(1 for t in tokenizer.id_to_token if _CJK_CHAR.fullmatch(t))
    report = (f"{len(SPECIALS)} special, {n_chars} Chinese characters, "
              f"{len(tokenizer) - len(SPECIALS) - n_chars} BPE pieces; {len(checked)} checked texts, no <unk>")
    return tokenizer, report
