"""Error rates on hand-counted cases, and the mixed tokenization against fireredasr/utils/wer.py."""

from __future__ import annotations

import pytest

from optimize.errors import OptimizeError
from optimize.evaluate.wer import ErrorStats, edit_distance, error_stats, normalize, score, tokenize


@pytest.mark.parametrize(
    "ref, hyp, dist",
    [("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3), ("abcd", "abcd", 0), ("abcd", "bcda", 2)],
)
def test_edit_distance(ref, hyp, dist):
    assert edit_distance(list(ref), list(hyp)) == dist


def test_normalize():
    assert normalize("Hello,  world!  don't") == "HELLO WORLD DON'T"
    assert normalize("ＡＢＣ１２３，你好。") == "ABC123 你好"  # full-width -> half-width, punctuation -> space
    assert normalize("今天<unk>天气\u3000好") == "今天 天气 好"
    assert normalize("a+b=c 「引号」") == "A B C 引号"


def test_tokenize_units():
    text = normalize("我们用 FireRed ASR 识别")
    assert tokenize(text, "char") == list("我们用FIREREDASR识别")
    assert tokenize(text, "word") == ["我们用", "FIRERED", "ASR", "识别"]
    assert tokenize(text, "mixed") == ["我", "们", "用", "FIRERED", "ASR", "识", "别"]


def test_mixed_tokens_match_fireredasr():
    wer = pytest.importorskip("fireredasr.utils.wer")
    for text in ("我们用 FireRed ASR 识别，真好！", "HELLO WORLD", "下午3点 meeting", "你好"):
        assert tokenize(normalize(text), "mixed") == wer.text2tokens(text)


def test_cer_counts_characters_without_spaces():
    stats = error_stats(["今天 天气 很好"], ["今天天汽很好啊"], "char")
    assert (stats.errors, stats.ref_len) == (2, 6)  # one substitution, one insertion
    assert stats.rate == pytest.approx(100 * 2 / 6)


def test_wer_counts_words():
    stats = error_stats(["the cat sat on the mat", "hello"], ["the cat sit on mat", "hello there"], "word")
    assert (stats.errors, stats.ref_len) == (3, 7)  # sat->sit, -the, +there


def test_score_per_language_and_mixed():
    refs = ["今天天气很好", "THE CAT SAT", "我用 ASR 工具"]
    hyps = ["今天天汽很好", "THE CAT", "我用 ASK 工具"]
    out = score(refs, hyps, ["zh", "en", "zh"])
    assert set(out) == {"zh", "en", "mixed"}
    # zh (char): 1 sub of 6, plus A-S-R vs A-S-K (1 sub) of 7 chars "我用ASR工具"
    assert (out["zh"].errors, out["zh"].ref_len) == (2, 13)
    assert (out["en"].errors, out["en"].ref_len) == (1, 3)
    # mixed: 6 chars + 3 words + (我, 用, ASR, 工, 具) = 14 tokens; 1 + 1 + 1 errors
    assert (out["mixed"].errors, out["mixed"].ref_len) == (3, 14)
    assert out["mixed"].rate == pytest.approx(100 * 3 / 14)


def test_empty_reference_rate_and_bad_input():
    assert ErrorStats(0, 0).rate == 0.0
    assert ErrorStats(2, 0).rate == 200.0
    with pytest.raises(OptimizeError, match="unknown language"):
        score(["a"], ["a"], ["fr"])
    with pytest.raises(OptimizeError, match="1 references, 2 hypotheses"):
        score(["a"], ["a", "b"], ["en"])


def test_edit_distance_matches_the_dynamic_program():
    """rapidfuzz against the textbook DP on random token lists, lengths 0..40 (the old implementation)."""
    import random

    def python_edit_distance(ref, hyp):
        prev = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            cur = [i]
            for j, h in enumerate(hyp, 1):
                cur.append(min(prev[j - 1] + (r != h), prev[j] + 1, cur[j - 1] + 1))
            prev = cur
        return prev[-1]

    rng = random.Random(0)
    for _ in range(200):
        ref = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        hyp = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        assert edit_distance(ref, hyp) == python_edit_distance(ref, hyp)


def test_substitutions_deletions_insertions():
    stats = error_stats(["the cat sat on the mat", "a b c"], ["the bat sat on mat", "a b c d e"], "word")
    assert (stats.substitutions, stats.deletions, stats.insertions) == (1, 1, 2)  # cat->bat, -the, +d +e
    assert stats.errors == 4 and stats.ref_len == 9
