"""int8.keep_float_budget: per-MatMul sensitivity measured on audio keeps the worst MatMuls float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optimize import graph
from optimize.errors import OptimizeError
from optimize.runtime.session import OrtPair
from optimize.stages import int8, sensitivity
from stage_helpers import copy_pair

CALIB = Path(__file__).resolve().parents[1] / "calibration" / "calib" / "audio"
PLANTED = "/tgt_word_prj/MatMul"  # the decoder's output projection, given one huge weight below


def _feats(n: int = 2, frames: int = 120) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal((1, frames + 40 * i, 80)).astype(np.float32) for i in range(n)]


def test_rounded_weight_is_symmetric_int8_per_channel_or_per_tensor():
    w = np.array([[0.5, -2.0], [0.25, 1.0], [-1.0, 0.01]], dtype=np.float32)
    per_col = sensitivity.rounded_weight(w, per_channel=True, reduce_range=False)
    assert np.allclose(per_col[:, 0], np.round(w[:, 0] / (1 / 127)) * (1 / 127))  # column 0: scale 1.0 / 127
    assert np.abs(per_col - w).max() <= 2.0 / 127 / 2 + 1e-7
    per_tensor = sensitivity.rounded_weight(w, per_channel=False, reduce_range=True)
    assert len(np.unique(np.round(per_tensor / (2.0 / 64), 4))) <= 129  # one 7-bit grid of step 2 / 64
    assert per_tensor[2, 1] == 0.0  # 0.01 is below half a step of the shared scale


def test_probe_graph_is_float_with_flags_off_and_the_int8_stage_with_flags_on(tiny_pair_v2, tmp_path):
    """The simulation is the stage's arithmetic: with every flag on it is far closer to the real
    int8 encoder than float is, and with every flag off it is the float encoder exactly."""
    enc = graph.load(tiny_pair_v2 / "encoder.onnx")
    cands = sensitivity.candidates(enc, "encoder", set())
    assert cands and all(c.weights > 0 for c in cands)
    int8.run(tiny_pair_v2, tmp_path / "q", int8.Int8Config(per_channel=True, reduce_range=False, graphs=("encoder",)))
    probe = sensitivity._session(sensitivity.probe_graph(enc, cands, sensitivity.Rounding(8, per_channel=True, reduce_range=False)), 1)
    flags = [i.name for i in probe.get_inputs() if i.name.startswith(sensitivity.FLAG_PREFIX)]
    assert len(flags) == len(cands)
    x = _feats(1)[0]
    feed = {"x": x, "x_len": np.array([x.shape[1]], dtype=np.int64)}
    ref = OrtPair(tiny_pair_v2, "cpu", 1).encode(x, feed["x_len"])[0]
    real = OrtPair(tmp_path / "q", "cpu", 1).encode(x, feed["x_len"])[0]
    off = probe.run(["n_layer_cross_k"], feed | {f: np.array(False) for f in flags})[0]
    on = probe.run(["n_layer_cross_k"], feed | {f: np.array(True) for f in flags})[0]
    assert np.array_equal(off, ref)
    assert np.abs(on - real).max() < 0.1 * np.abs(ref - real).max()


def test_choose_takes_the_highest_scores_within_the_budget():
    a, b, c, d = (sensitivity.Candidate("encoder", n, w) for n, w in (("a", 10), ("b", 60), ("c", 20), ("d", 10)))
    scores = {a: 5.0, b: 4.0, c: 3.0, d: 0.0}
    assert sensitivity.choose(scores, 0.35) == [a, c]  # by score per weight: a 0.5, c 0.15, b 0.07; d scores nothing
    assert sensitivity.choose(scores, 0.75) == [a, c]  # b does not fit in 75 of 100 weights after a and c
    assert sensitivity.choose(scores, 0.0) == []


@pytest.fixture(scope="module")
def planted(tiny_pair_v2, tmp_path_factory):
    """tiny_pair_v2 with one huge weight in the decoder's output projection: per-tensor int8 rounds
    the rest of that weight to almost nothing there, so that MatMul is the one int8 hurts most."""
    out = copy_pair(tiny_pair_v2, tmp_path_factory.mktemp("planted") / "pair")
    dec = graph.load(out / "decoder.onnx")
    node = next(n for n in dec.graph.node if n.name == PLANTED)
    init = next(t for t in dec.graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(init).copy()
    w[0, 0] = 200 * np.abs(w).max()
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save_model(dec, str(out / "decoder.onnx"))
    return out


def test_keep_float_budget_keeps_the_planted_matmul_float_and_records_why(planted, tmp_path):
    cfg = int8.Int8Config(per_channel=False, keep_float_budget=0.1, calibration=CALIB, calibration_samples=1)
    out = int8.run(planted, tmp_path / "out", cfg)
    sens = out.details["sensitivity"]
    nodes = sens["nodes"]
    assert nodes[0]["node"] == PLANTED and nodes[0]["graph"] == "decoder" and nodes[0]["chosen"]
    density = [n["share_of_scores"] / n["share_of_weights"] for n in nodes]
    assert density == sorted(density, reverse=True)
    assert sum(n["share_of_weights"] for n in nodes if n["chosen"]) <= 0.1 + 1e-9
    assert sens["divergence_chosen_left_out"] < sens["divergence_all_quantized"]
    assert PLANTED in out.details["decoder"]["excluded_nodes"]
    left = {n.name for n in graph.load(tmp_path / "out" / "decoder.onnx").graph.node if n.op_type == "MatMul"}
    assert PLANTED in left  # still a float MatMul in the output
    assert any("by measured sensitivity" in note for note in out.notes)


def test_keep_float_budget_config_errors():
    with pytest.raises(OptimizeError, match="keep_float_budget"):
        int8.Int8Config(keep_float_budget=1.5)
    with pytest.raises(OptimizeError, match="calibration_samples"):
        int8.Int8Config(keep_float_budget=0.1, calibration_samples=0)


def test_int4_excluded_budget_leaves_the_measured_matmuls_as_int8(planted, tmp_path):
    """The weight-only stages take the same budget: the chosen MatMuls become `excluded_as`, the rest 4-bit."""
    from optimize.stages import int4_weight_only

    cfg = int4_weight_only.Int4WeightOnlyConfig(excluded_budget=0.3, excluded_as="int8", calibration=CALIB, calibration_samples=1)
    out = int4_weight_only.run(planted, tmp_path / "out", cfg)
    chosen = [n["node"] for n in out.details["sensitivity"]["nodes"] if n["chosen"]]
    assert PLANTED in chosen and set(chosen) == set(out.details["decoder"]["int8_nodes"])
    dec = graph.load(tmp_path / "out" / "decoder.onnx")
    nbit = {n.name for n in dec.graph.node if n.op_type == "MatMulNBits"}
    assert nbit and not nbit & set(chosen)
    assert any("by measured sensitivity" in note for note in out.notes)
    with pytest.raises(OptimizeError, match="excluded_budget"):
        int4_weight_only.Int4WeightOnlyConfig(excluded_budget=-0.1)
