"""Greedy and beam search through our ONNX pair against the official `batch_beam_search`.

The official model decodes each batch with `FireRedAsrAed.transcribe`; we decode the
same features, in the same batch composition, with `Recognizer` on the exported pair.
Token sequences must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fireredasr.models.fireredasr_aed")

from optimize.export.checkpoint import make_random_checkpoint  # noqa: E402
from optimize.export.exporter import export_checkpoint  # noqa: E402
from optimize.runtime.recognizer import Recognizer  # noqa: E402
from optimize.runtime.search import DecodeConfig  # noqa: E402
from tests.conftest import TINY_DIMS  # noqa: E402
from tests.test_export import official_model  # noqa: E402

GREEDY = DecodeConfig(beam_size=1, softmax_smoothing=1.0, length_penalty=0.0)
BEAM = DecodeConfig()  # FireRedASR's recommended: beam 3, smoothing 1.25, length penalty 0.6


@pytest.fixture(scope="module")
def varied_pair(tmp_path_factory):
    """A random model whose outputs vary with the input.

    With tied embeddings at random init, the current token's own logit dominates and
    every hypothesis repeats sos; shrinking the embedding lets cross-attention decide.
    """
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp("varied_ckpt"), seed=3, **TINY_DIMS)
    package = torch.load(ckpt / "model.pth.tar", weights_only=False)
    state = package["model_state_dict"]
    state["decoder.tgt_word_emb.weight"] = state["decoder.tgt_word_emb.weight"] * 0.03
    state["decoder.tgt_word_prj.weight"] = state["decoder.tgt_word_emb.weight"]
    torch.save(package, ckpt / "model.pth.tar")
    out = tmp_path_factory.mktemp("varied_pair")
    export_checkpoint(ckpt, out)
    return ckpt, out


def official_tokens(off, feats: list[np.ndarray], cfg: DecodeConfig) -> list[tuple[int, ...]]:
    x = torch.zeros(len(feats), max(len(f) for f in feats), 80)
    for i, f in enumerate(feats):
        x[i, : len(f)] = torch.from_numpy(f)
    with torch.no_grad():
        hyps = off.transcribe(
            x, torch.tensor([len(f) for f in feats]), beam_size=cfg.beam_size, nbest=1,
            softmax_smoothing=cfg.softmax_smoothing, length_penalty=cfg.length_penalty, eos_penalty=cfg.eos_penalty,
        )  # fmt: skip
    return [tuple(h[0]["yseq"].tolist()) for h in hyps]


@pytest.mark.parametrize("cfg", [GREEDY, BEAM], ids=["greedy", "beam3"])
@pytest.mark.parametrize("seed,lengths", [(0, (120, 90, 47)), (1, (200,)), (2, (33, 160)), (3, (75, 75, 140, 61))])
def test_tokens_identical_to_official(varied_pair, cfg, seed, lengths):
    ckpt, pair = varied_pair
    off = official_model(ckpt)
    rng = np.random.default_rng(seed)
    feats = [rng.standard_normal((n, 80)).astype(np.float32) for n in lengths]
    ref = official_tokens(off, feats, cfg)
    ours = Recognizer(pair, DecodeConfig(**{**cfg.__dict__, "batch_size": len(feats)})).recognize_features(feats)
    assert [h.tokens for h in ours] == ref
    assert len({h.tokens for h in ours} | {()}) > 1 or len(feats) == 1  # not a degenerate all-equal output


def test_batching_does_not_change_tokens(varied_pair):
    _, pair = varied_pair
    rng = np.random.default_rng(7)
    feats = [rng.standard_normal((n, 80)).astype(np.float32) for n in (150, 40, 97, 61, 123)]
    single = Recognizer(pair, DecodeConfig(batch_size=1)).recognize_features(feats)
    # in one padded batch the search runs to the batch's longest T'; a row that
    # ended keeps its hypothesis, so the tokens per utterance must not change
    batched = Recognizer(pair, DecodeConfig(batch_size=5, max_len=40)).recognize_features(feats)
    single_capped = Recognizer(pair, DecodeConfig(batch_size=1, max_len=40)).recognize_features(feats)
    assert [h.tokens for h in batched] == [h.tokens for h in single_capped]
    assert len(single) == 5
