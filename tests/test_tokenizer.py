"""Tokenizer: dict.txt layout, round trip, <unk> handling and parity with FireRedASR's own tokenizer."""

from pathlib import Path

import numpy as np
import pytest

from optimize.corpus import sentences
from optimize.corpus.tokenizer import SPECIALS, Tokenizer, build_tokenizer, unknown_tokens
from optimize.errors import OptimizeError

# Inputs FireRedASR's tokenizer treats specially: case, both punctuation sets, mixed scripts, extension-A
# characters, unknown characters, empty and whitespace-only text.
EDGE_CASES = [
    "Hello, world! 你好。",
    "set an alarm 明天早上 seven thirty?",
    "明天，七点。好吗？好！",
    "A.B,C?D!E",
    "龘 XYZZY 㐀",
    "  two   spaces  ",
    "",
    "   ",
    "七点 SEVEN 七点",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = np.random.default_rng(0)
    return [sentences.sentence(rng, "zh" if i % 2 else "en") for i in range(1500)]


@pytest.fixture(scope="module")
def tokenizer(texts, tmp_path_factory) -> Tokenizer:
    return build_tokenizer(texts, tmp_path_factory.mktemp("lang"), spm_vocab_size=300)


def test_dict_layout(tokenizer, texts):
    lines = tokenizer.dict_path.read_text(encoding="utf-8").splitlines()
    assert [line.split() for line in lines[:5]] == [[t, str(i)] for i, t in enumerate(SPECIALS)]
    assert all(line.split()[1] == str(i) for i, line in enumerate(lines))
    chars = sorted({c for t in texts for c in t if "\u4e00" <= c <= "\u9fff"})
    assert tokenizer.id_to_token[5:5 + len(chars)] == chars
    pieces = tokenizer.id_to_token[5 + len(chars):]
    assert len(pieces) > 200 and any(p.startswith("\u2581") for p in pieces)
    assert (tokenizer.dict_path.parent / "train_bpe.model").is_file()


def test_round_trip(tokenizer, texts):
    for text in texts[:300]:
        ids = tokenizer.encode(text)
        assert tokenizer.unk_id not in ids, text
        assert tokenizer.decode(ids) == text


def test_chinese_is_one_token_per_character(tokenizer):
    assert tokenizer.tokens("明天早上七点半") == list("明天早上七点半")


def test_unknown_becomes_unk(tokenizer):
    assert tokenizer.encode("龘") == [SPECIALS.index("<unk>")]
    assert unknown_tokens(tokenizer, ["龘七"]) == {"龘"}


def test_parity_with_fireredasr(tokenizer, texts):
    aed = pytest.importorskip("fireredasr.tokenizer.aed_tokenizer")
    reference = aed.ChineseCharEnglishSpmTokenizer(str(tokenizer.dict_path), str(tokenizer.spm_path))
    for text in texts[:200] + [t.lower() for t in texts[:20]] + EDGE_CASES:
        tokens, ids = reference.tokenize(text)
        assert tokenizer.tokens(text) == tokens, text
        assert tokenizer.encode(text) == ids, text
        assert tokenizer.decode(ids) == reference.detokenize(ids), text


def test_build_is_reproducible(texts, tokenizer, tmp_path):
    again = build_tokenizer(texts, tmp_path, spm_vocab_size=300)
    assert again.id_to_token == tokenizer.id_to_token


def test_dict_with_wrong_id_is_an_error(tokenizer, tmp_path):
    bad = tmp_path / "dict.txt"
    bad.write_text("<blank> 0\n<unk> 1\n<pad> 5\n", encoding="utf-8")
    with pytest.raises(OptimizeError, match=r"dict.txt:3: id 5 is not the line index 2"):
        Tokenizer(bad, tokenizer.spm_path)


def test_missing_files_are_errors(tokenizer, tmp_path):
    with pytest.raises(OptimizeError, match="does not exist"):
        Tokenizer(tmp_path / "nope.txt", tokenizer.spm_path)
    with pytest.raises(OptimizeError, match="does not exist"):
        Tokenizer(tokenizer.dict_path, Path(tmp_path / "nope.model"))


def test_no_english_is_an_error(tmp_path):
    with pytest.raises(OptimizeError, match="no English"):
        build_tokenizer(["明天早上七点半"], tmp_path)
