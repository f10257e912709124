"""int4_weight_only: symmetric 4-bit MatMulNBits blocks; the host's M = 1 kernel against fp32; close to its input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from stage_helpers import assert_contract_kept, outside_contract_pair, probe_parity, truncated_pair

from optimize.errors import OptimizeError
from optimize.stages import int4_weight_only, nbits

REPO = Path(__file__).resolve().parents[1]
K, N = 256, 384  # a decoder-like weight, small enough for seconds


def _one_matmul(weight: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/decoder/fc/MatMul")
    g = helper.make_graph([node], "mm", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["M", K])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["M", N])], [numpy_helper.from_array(weight, "w")])  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(weight: np.ndarray, symmetric: bool) -> onnx.ModelProto:
    algo_class, quantizer_class = nbits.quantizer()
    kwargs = dict(block_size=32, is_symmetric=symmetric, accuracy_level=4, bits=4)
    q = quantizer_class(_one_matmul(weight), algo_config=algo_class(**kwargs), **kwargs)
    q.process()
    return q.model.model


@pytest.mark.parametrize("symmetric", [True, False])
def test_m1_matches_fp32_on_this_cpu(symmetric):
    """onnxruntime #29853: 4-bit with zero points is ~46% off at M = 1 on AVX2-only CPUs. Runs every suite run."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    model = _quantized(w, symmetric)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((4, K)).astype(np.float32)
    rows = np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(4)])  # M = 1, one row at a time
    fp32 = x @ w
    err = np.linalg.norm(rows - fp32) / np.linalg.norm(fp32)
    assert err < 0.15, f"M=1 int4 vs fp32 relative error {err:.3f} (symmetric={symmetric})"  # RTN int4 block 32: ~0.08
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    if symmetric:  # the stage's configuration: also exact against its own dequantized weights
        assert len(node.input) < 4 or not node.input[3]
        assert nbits.m1_error(model) < nbits.MAX_M1_ERROR


@pytest.fixture(scope="module")
def quantized(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("int4") / "out"
    return dst, int4_weight_only.run(tiny_pair, dst, int4_weight_only.Int4WeightOnlyConfig())


def test_int4_decoder_matches_its_input(tiny_pair, quantized):
    dst, out = quantized
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error == 0  # the encoder is copied: int4 goes to the decoder only
    assert p.teacher_forced_cosine > 0.995  # 4-bit blocks of 32 weights on a random-weight tiny decoder
    assert_contract_kept(tiny_pair, dst)
    assert out.details["decoder"]["MatMulNBits"] > 0 and out.details["decoder"]["m1_error"] < nbits.MAX_M1_ERROR
    assert (dst / "encoder.onnx").read_bytes() == (tiny_pair / "encoder.onnx").read_bytes()
    assert "encoder kept as it was (int4_weight_only.graphs)" in out.notes


def test_int4_broken_inputs(tiny_pair, tmp_path):
    cfg = int4_weight_only.Int4WeightOnlyConfig()
    with pytest.raises(OptimizeError, match="not a readable ONNX model"):
        int4_weight_only.run(truncated_pair(tiny_pair, tmp_path / "t"), tmp_path / "out", cfg)
    with pytest.raises(OptimizeError, match="decoder outputs"):
        int4_weight_only.run(outside_contract_pair(tiny_pair, tmp_path / "c"), tmp_path / "out", cfg)
    with pytest.raises(OptimizeError, match="matches no node"):
        int4_weight_only.run(tiny_pair, tmp_path / "out", int4_weight_only.Int4WeightOnlyConfig(nodes_to_exclude=("/no/*",)))
    with pytest.raises(OptimizeError, match="int4_weight_only.graphs"):
        int4_weight_only.Int4WeightOnlyConfig(graphs=("joiner",))
    with pytest.raises(OptimizeError, match="block_size"):
        int4_weight_only.Int4WeightOnlyConfig(block_size=24)
    assert not (tmp_path / "out").exists()


def test_m1_check_refuses_a_wrong_kernel(monkeypatch, tiny_pair, tmp_path):
    """A kernel as wrong as #29853 on this host stops the stage with the fix, before anything is published."""
    monkeypatch.setattr(nbits, "m1_error", lambda model: 0.46)
    with pytest.raises(OptimizeError, match="#29853"):
        int4_weight_only.run(tiny_pair, tmp_path / "out", int4_weight_only.Int4WeightOnlyConfig())
    assert not (tmp_path / "out").exists()


def test_excluded_matmuls_as_int8(tiny_pair, tmp_path):
    """The shipped recipe's mix: 4-bit FFN, the decoder's other constant-weight MatMuls dynamic int8, none left float."""
    from optimize.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "cpu_int8_int4dec.yaml")
    cfg = next(s.config for s in recipe.stages if s.name == "int4_weight_only")
    assert cfg.excluded_as == "int8"
    dst = tmp_path / "out"
    out = int4_weight_only.run(tiny_pair, dst, cfg)
    dec = onnx.load(dst / "decoder.onnx")
    consts = {t.name for t in dec.graph.initializer}
    nbit = [n.name for n in dec.graph.node if n.op_type == "MatMulNBits"]
    assert nbit and all(n.startswith("/mlp/") for n in nbit)
    assert out.details["decoder"]["int8_nodes"] and any("tgt_word_prj" in n for n in out.details["decoder"]["int8_nodes"])
    assert not [n.name for n in dec.graph.node if n.op_type == "MatMul" and n.input[1] in consts]  # no float weight left
    assert out.ops_after["decoder"].get("MatMulInteger", 0) == len(out.details["decoder"]["int8_nodes"])
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error == 0 and p.teacher_forced_cosine > 0.995
    assert_contract_kept(tiny_pair, dst)
    with pytest.raises(OptimizeError, match="excluded_as"):
        int4_weight_only.Int4WeightOnlyConfig(excluded_as="fp16")
