"""fp16: ORT's float16 conversion, float32 at the boundary, close to its input."""

from __future__ import annotations

import pytest
from stage_helpers import (
    assert_contract_kept,
    assert_truncated_input_refused,
    outside_contract_pair,
    probe_parity,
    refused,
)

import onnx

from optimize import graph
from optimize.errors import OptimizeError
from optimize.stages import fp16


@pytest.fixture(scope="module")
def halved(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("fp16") / "out"
    return dst, fp16.run(tiny_pair, dst, fp16.Fp16Config())


def test_fp16_matches_its_input(tiny_pair, halved):
    dst, _ = halved
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error < 5e-3  # fp16 has 11 significant bits
    assert p.teacher_forced_cosine > 0.9999
    assert p.greedy_identical == 1.0


def test_fp16_keeps_float32_boundary_and_halves_weights(tiny_pair, halved):
    dst, out = halved
    assert_contract_kept(tiny_pair, dst)  # includes float32 I/O types
    weights = [t for t in graph.load(dst / "encoder.onnx").graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert out.details["decoder"]["casts"] > 0


def test_fp16_keep_fp32_ops_applies(tiny_pair, tmp_path):
    out = fp16.run(tiny_pair, tmp_path / "out", fp16.Fp16Config(keep_fp32_ops=("Softmax",)))
    model = graph.load(tmp_path / "out" / "decoder.onnx")
    assert out.ops_after["decoder"]["Cast"] > 0
    inferred = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    softmax_out = [n.output[0] for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax_out and all(inferred.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for o in softmax_out)


def test_fp16_inapplicable_op_is_an_error(tiny_pair, tmp_path):
    with pytest.raises(OptimizeError, match="SkipLayerNormalization.*occurs in neither graph"):
        fp16.run(tiny_pair, tmp_path / "out", fp16.Fp16Config(keep_fp32_ops=("SkipLayerNormalization",)))
    assert not (tmp_path / "out").exists()


def test_fp16_truncated_input(tiny_pair, tmp_path):
    assert_truncated_input_refused(lambda src, out: fp16.run(src, out, fp16.Fp16Config()), tiny_pair, tmp_path)


def test_fp16_outside_contract(tiny_pair, tmp_path):
    run_stage = lambda src, out: fp16.run(src, out, fp16.Fp16Config())  # noqa: E731
    refused(run_stage, outside_contract_pair(tiny_pair, tmp_path / "broken"), tmp_path / "out", "decoder outputs")
