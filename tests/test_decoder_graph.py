"""decoder_graph: the runtime's in-memory decoder rewrite (per-layer cross K/V, one per utterance) is exact."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

from optimize import contract
from optimize.errors import OptimizeError
from optimize.runtime.binding import BoundPair
from optimize.runtime.decoder_graph import DecoderLayout, rewrite_decoder
from optimize.runtime.inference import OrtInference
from optimize.runtime.providers import ProviderOptions
from optimize.runtime.session import OrtPair
from optimize.stages import fuse

STACKED = ProviderOptions(rewrite_decoder=False)


@pytest.fixture(scope="module")
def fused_pair(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("decoder_graph") / "fused"
    fuse.run(tiny_pair, dst, fuse.FuseConfig(firered_fusions=("attention",)))
    return dst


def _encoded(pair: OrtPair, utterances: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cross K/V of `utterances` random inputs of different lengths, and their mask (last rows padded)."""
    rng = np.random.default_rng(3)
    frames = np.array([180 - 40 * u for u in range(utterances)], dtype=np.int64)
    x = rng.standard_normal((utterances, int(frames.max()), 80)).astype(np.float32)
    for u, n in enumerate(frames):
        x[u, n:] = 0
    cross_k, cross_v = pair.encode(x, frames)
    valid = np.array([cross_k.shape[2] - 10 * u for u in range(utterances)])
    mask = np.where(np.arange(cross_k.shape[2])[None, :] < valid[:, None], 0.0, -np.inf).astype(np.float32)
    return cross_k, cross_v, mask.reshape(utterances, 1, 1, -1)


def _decode(pair: OrtPair, enc, beam: int, steps: int) -> list[np.ndarray]:
    """Logits of `steps` steps of utterances x beam rows, with a beam reorder after every step, then both caches."""
    model = OrtInference(pair, *enc, cache_len=pair.fixed_cache_len or steps + 1)
    model.start(beam)
    rows = enc[0].shape[1] * beam
    tokens = np.full(rows, 1, dtype=np.int64)
    out = []
    for t in range(steps):
        logits = model.step(tokens, t)
        out.append(logits)
        tokens = np.argsort(-logits, axis=1)[:, t % 3].astype(np.int64)  # not always the argmax
        model.reorder(np.roll(np.arange(rows), t))  # rows change places, as a beam search does
    return out + [model._k, model._v]


@pytest.mark.parametrize("which, per_utterance", [("tiny_pair", False), ("fused_pair", True)], ids=["unfused", "fused"])
@pytest.mark.parametrize("utterances, beam", [(1, 1), (1, 3), (2, 3)], ids=["greedy", "beam3", "batch2-beam3"])
def test_rewritten_decoder_gives_the_logits_of_the_stacked_one(request, which, per_utterance, utterances, beam):
    path = request.getfixturevalue(which)
    ours, stacked = OrtPair(path, threads=1), OrtPair(path, threads=1, options=STACKED)
    assert stacked.layout is None
    heads = ours.info.num_head if per_utterance else None  # fused: cross K/V handed over heads-first
    assert ours.layout == DecoderLayout(ours.info.num_decoder_layers, per_utterance=per_utterance, appends_kv=True, heads_first=heads)
    enc = _encoded(stacked, utterances)
    mask = enc[2] if utterances > 1 else None
    got = _decode(ours, (*enc[:2], mask), beam, 6)
    want = _decode(stacked, (*enc[:2], mask), beam, 6)
    for t, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.shape[0] == (utterances * beam if t < 6 else ours.info.num_decoder_layers)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), f"step {t}" if t < 6 else "caches"


def test_rewrite_leaves_the_file_and_unfit_graphs_alone(fused_pair, tiny_pair_v1):
    path = fused_pair / contract.DECODER_FILE
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    OrtPair(fused_pair, threads=1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    model = onnx.load(str(path))
    # a consumer of the stacked cross K/V that is not a per-layer Gather: the graph does not fit
    extra = onnx.helper.make_node("Identity", [contract.DECODER_INPUTS[3][0]], ["stacked_copy"])
    model.graph.node.append(extra)
    model.graph.output.append(onnx.helper.make_tensor_value_info("stacked_copy", onnx.TensorProto.FLOAT, None))
    untouched = model.SerializeToString()
    assert rewrite_decoder(model) is None
    assert model.SerializeToString() == untouched
    # the published v1 layout (batch fixed at 1) runs beam rows one by one, cross K/V per row
    v1 = OrtPair(tiny_pair_v1, threads=1)
    enc = _encoded(v1, 1)
    want = _decode(OrtPair(tiny_pair_v1, threads=1, options=STACKED), (*enc[:2], None), 3, 3)
    assert all(np.abs(a - b).max() <= 1e-5 * np.abs(b).max() for a, b in zip(_decode(v1, (*enc[:2], None), 3, 3), want))


def test_iobinding_refuses_a_pair_opened_for_the_numpy_path(tiny_pair):
    pair = OrtPair(tiny_pair, threads=1)
    bound = BoundPair(pair)
    k = bound.zeros((pair.info.num_decoder_layers, 1, 3, pair.info.num_head, pair.info.head_dim))
    with pytest.raises(OptimizeError, match="io_binding=True"):
        bound.decoder_step(np.array([[1]]), k, k, k, k, 0)


def test_rewritten_decoder_loads_from_a_temporary_copy_that_is_removed(tiny_pair, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where TemporaryDirectory puts the copy
    pair = OrtPair(tiny_pair, threads=1)
    assert pair.layout is not None and list(tmp_path.iterdir()) == []  # read by the session, then removed
    enc = _encoded(pair, 1)
    want = _decode(OrtPair(tiny_pair, threads=1, options=STACKED), (*enc[:2], None), 3, 3)
    assert all(np.abs(a - b).max() <= 1e-5 * np.abs(b).max() for a, b in zip(_decode(pair, (*enc[:2], None), 3, 3), want))

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", no_room)
    fallback = OrtPair(tiny_pair, threads=1)  # no room for the copy: the decoder as published, still right
    assert fallback.layout is None
    assert all(np.abs(a - b).max() <= 1e-5 * np.abs(b).max() for a, b in zip(_decode(fallback, (*enc[:2], None), 3, 3), want))
