"""int8_static: encoder MatMuls int8 with activation ranges from calibration audio; close to its input."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_helpers import assert_contract_kept, outside_contract_pair, probe_parity, truncated_pair

from optimize.errors import OptimizeError
from optimize.stages import int8_static

CALIB = Path(__file__).resolve().parents[1] / "calibration" / "calib" / "audio"


@pytest.fixture(scope="module", params=["QDQ", "QOperator"])
def quantized(request, tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("static") / "out"
    cfg = int8_static.Int8StaticConfig(calibration=CALIB, samples=4, quant_format=request.param)
    return dst, int8_static.run(tiny_pair, dst, cfg), request.param


def test_static_int8_matches_its_input(tiny_pair, quantized):
    dst, out, _ = quantized
    p = probe_parity(tiny_pair, dst)
    # ranges come from 4 real utterances, the probes are N(0, 1) features: some activations clip
    assert p.cross_kv_rel_error < 0.15
    assert p.teacher_forced_cosine > 0.999
    assert_contract_kept(tiny_pair, dst)
    assert sum(out.details["quantized"].values()) > 0 and out.details["calibration"]["files"] == 4
    assert (dst / "decoder.onnx").read_bytes() == (tiny_pair / "decoder.onnx").read_bytes()
    assert out.ops_after["encoder"].get("DynamicQuantizeLinear", 0) == 0  # no run-time range search


def _ops_ort_runs(model: Path, tmp_path: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its QDQ fusions, at the runtime's level)."""
    import onnxruntime as ort

    from optimize import graph

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return graph.op_counts(graph.load(tmp_path / "optimized.onnx", load_external=False))


def test_static_int8_qdq_runs_integer_matmuls_with_float_outputs(quantized, tmp_path):
    """QDQ leaves each MatMul's output float: ORT runs MatMulIntegerToFloat on the static ranges, not
    QLinearMatMul + a DequantizeLinear of its output (0.68x dynamic int8's encoder speed at AED-L, BENCHMARKS 9.7)."""
    dst, _, quant_format = quantized
    ops = _ops_ort_runs(dst / "encoder.onnx", tmp_path)
    if quant_format == "QOperator":
        assert ops.get("QLinearMatMul", 0) > 0  # the format's own op: its output is u8 by definition
        return
    assert ops.get("MatMulIntegerToFloat", 0) > 0
    assert ops.get("QLinearMatMul", 0) == 0 and ops.get("DynamicQuantizeLinear", 0) == 0


def test_static_int8_quantizes_weight_matmuls_only(tiny_pair, quantized):
    """Attention score/context MatMuls (both inputs activations) stay float in both formats, as in `int8`."""
    from optimize import graph

    dst, out, _ = quantized
    before = graph.load(tiny_pair / "encoder.onnx", load_external=False)
    names = {i.name for i in before.graph.initializer}
    weight_matmuls = {n.name for n in before.graph.node if n.op_type == "MatMul" and n.input[1] in names}
    after = graph.load(dst / "encoder.onnx", load_external=False)
    float_matmuls = {n.name for n in after.graph.node if n.op_type == "MatMul"
                     and not any(p.op_type == "DequantizeLinear" for p in graph_producers(after, n))}  # fmt: skip
    assert {n.name for n in before.graph.node if n.op_type == "MatMul"} - weight_matmuls <= float_matmuls
    assert out.details["encoder"]["quantized_matmuls"] == len(weight_matmuls)


def graph_producers(model, node):
    made = {o: n for n in model.graph.node for o in n.output}
    return [made[i] for i in node.input if i in made]


def test_static_int8_broken_inputs(tiny_pair, tmp_path):
    cfg = int8_static.Int8StaticConfig(calibration=CALIB, samples=2)
    with pytest.raises(OptimizeError, match="not a readable ONNX model"):
        int8_static.run(truncated_pair(tiny_pair, tmp_path / "t"), tmp_path / "out", cfg)
    with pytest.raises(OptimizeError, match="decoder outputs"):
        int8_static.run(outside_contract_pair(tiny_pair, tmp_path / "c"), tmp_path / "out", cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptimizeError, match="holds no wav"):
        int8_static.run(tiny_pair, tmp_path / "out", int8_static.Int8StaticConfig(calibration=tmp_path / "empty"))
    with pytest.raises(OptimizeError, match="quant_format"):
        int8_static.Int8StaticConfig(quant_format="QInt4")
    assert not (tmp_path / "out").exists()
