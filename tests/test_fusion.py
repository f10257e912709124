"""optimize.fusion: FireRedASR attention -> com.microsoft MultiHeadAttention.

Every fused graph is compared with the unfused graph it came from, on the same inputs:
encoder cross K/V, and decoder logits plus both caches over several steps that feed back
their own caches. Threshold: max |fused - unfused| <= 1e-4 x max |unfused| per output.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimize import contract, graph
from optimize.errors import OptimizeError
from optimize.fusion import FusionReport, fuse_attention

from conftest import TINY_DIMS

REL_TOL = 1e-4
STEPS = 6  # decoder steps per test, each feeding back its own caches
H, DH = TINY_DIMS["n_head"], TINY_DIMS["d_model"] // TINY_DIMS["n_head"]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1  # the test machine is shared
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _fused(path, kind: str) -> tuple[onnx.ModelProto, onnx.ModelProto, FusionReport]:
    """(unfused, fused, report) for one graph file."""
    model = graph.load(path)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    return model, fused, fuse_attention(fused, kind)


@pytest.fixture(scope="module")
def encoders(tiny_pair):
    unfused, fused, report = _fused(tiny_pair / contract.ENCODER_FILE, "encoder")
    return _session(unfused), _session(fused), report, unfused, fused


@pytest.fixture(scope="module", params=["dynamic", "fixed-1024"])
def decoders(request, tiny_pair, tiny_pair_v1):
    pair = tiny_pair if request.param == "dynamic" else tiny_pair_v1
    unfused, fused, report = _fused(pair / contract.DECODER_FILE, "decoder")
    return _session(unfused), _session(fused), report, unfused, fused


def _encoder_inputs(lengths: tuple[int, ...]) -> dict[str, np.ndarray]:
    """x shape = (N, max(lengths), 80) float32, zero after each length (as FireRedASR pads)."""
    x = np.random.default_rng(sum(lengths)).standard_normal((len(lengths), max(lengths), 80)).astype(np.float32)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return {"x": x, "x_len": np.array(lengths, np.int64)}


@pytest.mark.parametrize("lengths", [(37,), (203,), (203, 150, 61), (97, 240), (400, 13, 400, 222)])
def test_encoder_matches_unfused(encoders, lengths):
    unfused, fused, *_ = encoders
    feed = _encoder_inputs(lengths)
    for ref, got in zip(unfused.run(None, feed), fused.run(None, feed)):
        assert got.shape == ref.shape
        assert _rel_err(got, ref) <= REL_TOL


def _cross(encoders, lengths):
    """Cross K/V (L, N, T', D) from the unfused encoder and the additive mask (N, 1, 1, T')."""
    k, v = encoders[0].run(None, _encoder_inputs(lengths))
    t_enc = k.shape[2]
    valid = np.arange(t_enc)[None, :] < (np.array(lengths)[:, None] + 3) // 4
    mask = np.where(valid, 0.0, -np.inf).astype(np.float32)[:, None, None, :]
    return k, v, mask


def _cache(session: ort.InferenceSession, n: int) -> np.ndarray:
    """Zero self cache, shape = (L, N, S, H, Dh); S = 1024 when fixed, else STEPS + 1."""
    s = session.get_inputs()[1].shape[2]
    return np.zeros((TINY_DIMS["n_layers_dec"], n, s if isinstance(s, int) else STEPS + 1, H, DH), np.float32)


@pytest.mark.parametrize("lengths", [(203,), (203, 150, 61), (97, 240, 240)])
def test_decoder_steps_match_unfused(encoders, decoders, lengths):
    unfused, fused, *_ = decoders
    k, v, mask = _cross(encoders, lengths)
    n = len(lengths)
    caches = {"ref": (_cache(unfused, n),) * 2, "got": (_cache(fused, n),) * 2}
    tokens = np.full((n, 1), 3, np.int64)  # sos
    for step in range(STEPS):
        outs = {}
        for name, session in (("ref", unfused), ("got", fused)):
            feed = {"tokens": tokens, "in_n_layer_self_k_cache": caches[name][0], "in_n_layer_self_v_cache": caches[name][1],
                    "n_layer_cross_k": k, "n_layer_cross_v": v, "offset": np.array([step], np.int64), contract.CROSS_MASK: mask}  # fmt: skip
            outs[name] = session.run(None, feed)
            caches[name] = tuple(outs[name][1:])
        for i, (ref, got) in enumerate(zip(outs["ref"], outs["got"])):
            assert _rel_err(got, ref) <= REL_TOL, f"step {step}, output {i}"
        tokens = outs["ref"][0].argmax(-1)  # both follow the same (greedy) hypothesis


def test_decoder_without_mask_input(encoders, decoders):
    """Six-input callers (sherpa-onnx) leave cross_attn_mask at its (1, 1, 1, 1) zero default."""
    unfused, fused, *_ = decoders
    k, v, _ = _cross(encoders, (150,))
    feed = {"tokens": np.array([[3]]), "in_n_layer_self_k_cache": _cache(unfused, 1), "in_n_layer_self_v_cache": _cache(unfused, 1),
            "n_layer_cross_k": k, "n_layer_cross_v": v, "offset": np.array([0], np.int64)}  # fmt: skip
    for ref, got in zip(unfused.run(None, feed), fused.run(None, feed)):
        assert _rel_err(got, ref) <= REL_TOL


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_one_fused_attention_per_encoder_layer(encoders):
    *_, report, unfused, fused = encoders
    layers = TINY_DIMS["n_layers_enc"]
    assert (report.candidates, report.fused, report.skipped) == (layers, layers, ())
    assert report.by_role == {"encoder_self": layers}
    assert [x.layer for x in report.layers] == list(range(layers))
    assert json.loads(json.dumps(report.to_json()))["by_role"] == {"encoder_self": layers}
    assert _ops(fused)["MultiHeadAttention"] == layers and _ops(fused)["Softmax"] == 0
    assert len(unfused.graph.node) - report.nodes_removed + report.nodes_added == len(fused.graph.node)


def test_two_fused_attentions_per_decoder_layer(decoders):
    *_, report, unfused, fused = decoders
    layers = TINY_DIMS["n_layers_dec"]
    assert (report.candidates, report.fused, report.skipped) == (2 * layers, 2 * layers, ())
    assert report.by_role == {"decoder_self": layers, "decoder_cross": layers}
    assert _ops(fused)["MultiHeadAttention"] == 2 * layers and _ops(fused)["Softmax"] == 0
    assert len(unfused.graph.node) - report.nodes_removed + report.nodes_added == len(fused.graph.node)


def test_mha_attributes_are_portable(encoders, decoders):
    """Only num_heads and scale: no CPU-only attribute, so the graphs stay valid for CUDA."""
    for model in (encoders[4], decoders[4]):
        for node in model.graph.node:
            if node.op_type == "MultiHeadAttention":
                assert node.domain == "com.microsoft"
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                assert attrs.keys() == {"num_heads", "scale"} and attrs["num_heads"] == H
                assert attrs["scale"] == pytest.approx(DH**-0.5)
        onnx.checker.check_model(model)


def test_contract_untouched(encoders, decoders):
    for _, _, _, unfused, fused in (encoders, decoders):
        assert graph.io_signature(fused) == graph.io_signature(unfused)
        assert graph.metadata(fused) == graph.metadata(unfused)
        assert graph.overridable_initializers(fused).keys() == graph.overridable_initializers(unfused).keys()
        assert [i.name for i in _session(fused).get_inputs()] == [i.name for i in _session(unfused).get_inputs()]


def test_nothing_to_fuse_says_so(encoders):
    """A second run finds no attention, and an encoder is no decoder: fused == 0, graph unchanged."""
    fused = encoders[4]
    again = onnx.ModelProto()
    again.CopyFrom(fused)
    report = fuse_attention(again, "encoder")
    assert (report.candidates, report.fused, report.nodes_removed, report.nodes_added) == (0, 0, 0, 0)
    assert again == fused
    wrong = onnx.ModelProto()
    wrong.CopyFrom(encoders[3])
    report = fuse_attention(wrong, "decoder")
    assert report.fused == 0 and len(report.skipped) == report.candidates == TINY_DIMS["n_layers_enc"]
    assert all("not a plain Q·Kᵀ MatMul" in why for _, why in report.skipped)
    assert wrong == encoders[3]


def test_unknown_kind_is_an_error(encoders):
    with pytest.raises(OptimizeError, match="unknown attention fusion kind 'joiner'"):
        fuse_attention(encoders[3], "joiner")


def test_shared_probabilities_are_not_fused(tiny_pair):
    """An attention whose probabilities something else reads stays unfused (it would run twice)."""
    model = graph.load(tiny_pair / contract.ENCODER_FILE)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT, None))
    reference = _session(model)
    report = fuse_attention(model, "encoder")
    assert report.fused == TINY_DIMS["n_layers_enc"] - 1
    assert report.skipped == ((softmax.name, "its attention probabilities have other consumers"),)
    feed = _encoder_inputs((203, 61))
    for ref, got in zip(reference.run(None, feed), _session(model).run(None, feed)):
        assert _rel_err(got, ref) <= REL_TOL


def _ort_opt0(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's python fusions at opt_level 0 without shape inference, as the fuse stage runs them."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_shape_inference = False  # it deletes the rel_shift Reshapes (ort-toolchain.md E2)
    return optimize_model(model, model_type="bert", num_heads=H, hidden_size=TINY_DIMS["d_model"], opt_level=0, optimization_options=options).model


@pytest.fixture(scope="module")
def simplified_pair(tiny_pair, tmp_path_factory):
    """The tiny pair after the simplify stage (onnxsim), which runs before fuse in the recipes."""
    from optimize.stages import simplify

    out = tmp_path_factory.mktemp("simplified") / "pair"
    simplify.run(tiny_pair, out, simplify.SimplifyConfig())
    return out


@pytest.mark.parametrize("simplified", [False, True], ids=["export", "simplify"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_fuses_after_ort_fusions(request, tiny_pair, encoders, kind, simplified):
    """ORT's LayerNorm/SkipLayerNorm fusions run first in the fuse stage; every layer still fuses."""
    pair = request.getfixturevalue("simplified_pair") if simplified else tiny_pair
    model = _ort_opt0(graph.load(pair / (contract.ENCODER_FILE if kind == "encoder" else contract.DECODER_FILE)))
    reference = _session(model)
    report = fuse_attention(model, kind)
    want = TINY_DIMS["n_layers_enc"] if kind == "encoder" else 2 * TINY_DIMS["n_layers_dec"]
    assert report.fused == report.candidates == want
    if kind == "encoder":
        feed = _encoder_inputs((203, 150, 61))
    else:
        k, v, mask = _cross(encoders, (203, 61))
        feed = {"tokens": np.array([[3], [3]]), "in_n_layer_self_k_cache": _cache(reference, 2), "in_n_layer_self_v_cache": _cache(reference, 2),
                "n_layer_cross_k": k, "n_layer_cross_v": v, "offset": np.array([0], np.int64), contract.CROSS_MASK: mask}  # fmt: skip
    for ref, got in zip(reference.run(None, feed), _session(model).run(None, feed)):
        assert _rel_err(got, ref) <= REL_TOL
