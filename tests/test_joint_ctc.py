"""Joint CTC/attention decoding (DecodeConfig.ctc_weight): the prefix scorer against brute force, the search, the recognizer."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from stage_helpers import cli

from optimize.corpus.manifest import read_manifest
from optimize.errors import OptimizeError
from optimize.runtime import ctc
from optimize.runtime.audio import load_audio
from optimize.runtime.recognizer import Recognizer
from optimize.runtime.search import DecodeConfig, beam_search, search_scored

EOS = 9
EVAL = Path(__file__).resolve().parents[1] / "calibration" / "eval"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def _collapse(path) -> tuple[int, ...]:
    out, prev = [], None
    for label in path:
        if label != ctc.BLANK and label != prev:
            out.append(int(label))
        prev = label
    return tuple(out)


def _brute_force(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """P(transcript) for every transcript, by enumerating every frame path."""
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        key = _collapse(path)
        probs[key] = probs.get(key, 0.0) + float(np.exp(sum(log_probs[t, s] for t, s in enumerate(path))))
    return probs


def test_prefix_scores_match_enumeration():
    """psi(h + c) = P(transcript starts with h + c); eos: P(transcript = h); a padded row scores on its valid frames only."""
    rng = np.random.default_rng(0)
    t_len, vocab = 5, 4  # tokens 1..3, 0 = blank; eos is outside the CTC vocabulary's labels here
    valid = np.array([5, 3])
    log_probs = _log_softmax(rng.standard_normal((2, t_len, vocab)) * 1.5)
    log_probs = np.concatenate([log_probs, np.full((2, t_len, EOS + 1 - vocab), -30.0, dtype=np.float32)], axis=2)
    truth = [_brute_force(log_probs[n, : valid[n], :vocab].astype(np.float64)) for n in range(2)]
    scorer = ctc.PrefixScorer(log_probs, valid, rows_per_utt=1, eos=EOS)
    psi_h = np.zeros(2)
    for prefix in ((), (2,), (2, 2), (2, 2, 1)):  # a repeat needs a blank between the two 2s
        cands = np.array([[1, 2, 3, EOS]] * 2)
        delta = scorer.score(cands)
        for n in range(2):
            for k, c in enumerate(cands[n]):
                if c == EOS:
                    want = truth[n].get(prefix, 0.0)
                else:
                    want = sum(p for y, p in truth[n].items() if y[: len(prefix) + 1] == prefix + (int(c),))
                got = np.exp(np.float64(delta[n, k]) + psi_h[n])
                assert got == pytest.approx(want, rel=2e-4, abs=1e-9), (prefix, n, int(c))
        if len(prefix) < 3:
            nxt = (2, 2, 1)[len(prefix)]
            pick = np.array([[1, 2, 3].index(nxt)] * 2)
            psi_h = psi_h + delta[np.arange(2), pick]
            scorer.advance(np.arange(2), pick, np.array([nxt, nxt]))


def test_eos_score_is_the_ctc_likelihood():
    """Summed deltas along a 12-token hypothesis over 60 frames + eos = log P_ctc(y | x), torch's ctc_loss."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    t_len, vocab = 60, 12
    log_probs = _log_softmax(rng.standard_normal((1, t_len, vocab)) * 2.0)
    y = [3, 5, 5, 1, 7, 7, 7, 2, 11, 4, 4, 6]
    scorer = ctc.PrefixScorer(log_probs, np.array([t_len]), rows_per_utt=1, eos=8)
    total = 0.0
    for token in y + [8]:  # 8 stands for eos
        cands = np.array([[token]])
        total += float(scorer.score(cands)[0, 0])
        scorer.advance(np.array([0]), np.array([0]), np.array([token]))
    nll = torch.nn.functional.ctc_loss(torch.from_numpy(log_probs[0][:, None]), torch.tensor([y]), [t_len], [len(y)], reduction="sum")
    assert total == pytest.approx(-float(nll), abs=1e-3)


class _Scripted:
    """An attention decoder that reads a fixed log-prob table by hypothesis length: it wants to stop after one token."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def start(self, beam):
        pass

    def step(self, tokens, offset):
        logits = np.full((len(tokens), self.vocab), -8.0, dtype=np.float32)
        logits[:, 5] = 0.0 if offset == 0 else -2.0
        logits[:, 6] = -2.5
        logits[:, EOS] = -6.0 if offset == 0 else 0.0
        return logits

    def reorder(self, rows):
        pass


def test_joint_search_keeps_what_ctc_hears():
    """Attention alone drops the last token (eos after '5'); the CTC head hears '5 6'; joint decoding keeps both."""
    vocab, t_len = 12, 8
    frames = np.full((t_len, vocab), -9.0, dtype=np.float32)
    frames[:, ctc.BLANK] = -0.05
    frames[1, 5], frames[1, ctc.BLANK] = -0.05, -5.0
    frames[5, 6], frames[5, ctc.BLANK] = -0.05, -5.0
    log_probs = _log_softmax(frames)[None]
    cfg = DecodeConfig(beam_size=3, length_penalty=0.0)
    assert beam_search(_Scripted(vocab), 1, t_len, cfg, 3, EOS)[0].tokens == (5,)
    joint = DecodeConfig(beam_size=3, length_penalty=0.0, ctc_weight=0.5)
    scorer = ctc.PrefixScorer(log_probs, np.array([t_len]), 3, EOS)
    assert search_scored(_Scripted(vocab), 1, t_len, joint, 3, EOS, scorer)[0].tokens == (5, 6)
    greedy = DecodeConfig(beam_size=1, length_penalty=0.0, ctc_weight=0.5)
    scorer = ctc.PrefixScorer(log_probs, np.array([t_len]), 1, EOS)
    assert search_scored(_Scripted(vocab), 1, t_len, greedy, 3, EOS, scorer)[0].tokens == (5, 6)
    with pytest.raises(OptimizeError, match="CTC head"):
        search_scored(_Scripted(vocab), 1, t_len, joint, 3, EOS)


def test_joint_decoding_batches_like_single(default_pair_v2):
    """Padded rows score on their own frames: batch 4 gives batch 1's tokens, at beam 3 and greedy."""
    utts = read_manifest(EVAL)[:4]
    for beam in (3, 1):
        single = Recognizer(default_pair_v2, DecodeConfig(beam_size=beam, ctc_weight=0.4))
        feats = [single.features(load_audio(u.audio)) for u in utts]
        assert len({len(f) for f in feats}) > 1  # the batch is padded
        batched = Recognizer(default_pair_v2, DecodeConfig(beam_size=beam, ctc_weight=0.4, batch_size=4))
        assert [h.tokens for h in batched.recognize_features(feats)] == [h.tokens for h in single.recognize_features(feats)]


def test_ctc_weight_user_errors(tiny_pair, default_pair_v2):
    with pytest.raises(OptimizeError, match="no ctc_log_probs output"):
        Recognizer(tiny_pair, DecodeConfig(ctc_weight=0.3))
    audio = read_manifest(EVAL)[0].audio
    result = cli("transcribe", tiny_pair, audio, "--ctc-weight", "0.3")
    assert result.exit_code == 2 and "no ctc_log_probs output" in result.stderr and "--with-ctc" in result.stderr
    result = cli("transcribe", default_pair_v2, audio, "--ctc-weight", "1.5")
    assert result.exit_code == 2 and "ctc_weight=1.5" in result.stderr and "0 <= ctc_weight <= 1" in result.stderr
    result = cli("transcribe", default_pair_v2, audio, "--ctc-weight", "0.3", "--beam-size", "2")
    assert result.exit_code == 0, result.stderr


def test_pair_recommends_its_weight(tiny_ckpt_v2, tiny_pair, tmp_path):
    """Encoder metadata ctc_weight is the default weight; an explicit one wins; a pair without it or without the head decodes attention only."""
    from optimize import contract
    from optimize.export.exporter import ExportConfig, export_checkpoint

    out = tmp_path / "rec"
    export_checkpoint(tiny_ckpt_v2, out, ExportConfig(with_ctc=True, ctc_weight=0.4))
    assert Recognizer(out).decode.ctc_weight == 0.4
    assert Recognizer(out, DecodeConfig(ctc_weight=0.0)).decode.ctc_weight == 0.0
    assert Recognizer(tiny_pair).decode.ctc_weight == 0.0
    with pytest.raises(OptimizeError, match="only for a pair exported with its CTC head"):
        ExportConfig(ctc_weight=0.4)
    meta = {k: "1" for k in contract.REQUIRED_METADATA} | {"cmvn_mean": ",".join(["0"] * 80), "cmvn_inv_stddev": ",".join(["1"] * 80)}
    assert contract.parse_metadata(meta, "enc").get("ctc_weight") is None
    assert contract.parse_metadata(meta | {"ctc_weight": "0.5"}, "enc")["ctc_weight"] == 0.5
    for bad in ("1.5", "nan", "high"):
        with pytest.raises(OptimizeError, match="ctc_weight|malformed"):
            contract.parse_metadata(meta | {"ctc_weight": bad}, "enc")
