"""int8: dynamic MatMul quantization; reduce_range by VNNI; exclusions; close to its input."""

from __future__ import annotations

import pytest
from stage_helpers import (
    assert_contract_kept,
    assert_truncated_input_refused,
    outside_contract_pair,
    probe_parity,
    refused,
)

from optimize import graph
from optimize.errors import OptimizeError
from optimize.host import cpu_flags
from optimize.stages import int8


@pytest.fixture(scope="module")
def quantized(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("int8") / "out"
    return dst, int8.run(tiny_pair, dst, int8.Int8Config())


def test_int8_matches_its_input(tiny_pair, quantized):
    dst, _ = quantized
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error < 0.05  # per-tensor 8-bit weights and activations
    assert p.teacher_forced_cosine > 0.999
    assert p.greedy_prefix > 0.5


def test_int8_quantizes_matmuls_and_keeps_contract(tiny_pair, quantized):
    dst, out = quantized
    assert_contract_kept(tiny_pair, dst)
    for role in ("encoder", "decoder"):
        assert out.details[role]["quantized"]["MatMulInteger"] > 0
        assert out.ops_after[role].get("ConvInteger", 0) == 0  # MatMul only
    # the default reduce_range "auto" resolved for this host: on only without VNNI
    assert out.details["reduce_range"] is int8.resolve_reduce_range("auto", cpu_flags())


@pytest.mark.parametrize("flags, want", [({"avx2"}, True), ({"avx2", "avx512_vnni"}, False), ({"avx_vnni"}, False), (set(), True)])
def test_reduce_range_auto_is_on_only_without_vnni(flags, want):
    assert int8.resolve_reduce_range("auto", frozenset(flags)) is want
    assert int8.resolve_reduce_range(False, frozenset(flags)) is False


def test_int8_excludes_named_nodes(tiny_pair, tmp_path):
    pattern = "/encoder/layer_stack.0/*"
    out = int8.run(tiny_pair, tmp_path / "out", int8.Int8Config(nodes_to_exclude=(pattern,)))
    excluded = out.details["encoder"]["excluded_nodes"]
    assert excluded and all(n.startswith("/encoder/layer_stack.0/") for n in excluded)
    names = {n.name for n in graph.load(tmp_path / "out" / "encoder.onnx").graph.node if n.op_type == "MatMul"}
    assert "/encoder/layer_stack.0/ffn1/net/net.1/MatMul" in names  # left in float


def test_int8_config_errors():
    with pytest.raises(OptimizeError, match="Gemm"):
        int8.Int8Config(op_types=("Gemm",))
    with pytest.raises(OptimizeError, match="reduce_range"):
        int8.Int8Config(reduce_range="sometimes")


def test_int8_pattern_matching_nothing_is_an_error(tiny_pair, tmp_path):
    with pytest.raises(OptimizeError, match="matches no node"):
        int8.run(tiny_pair, tmp_path / "out", int8.Int8Config(nodes_to_exclude=("/no/such/*",)))
    assert not (tmp_path / "out").exists()


def test_int8_truncated_input(tiny_pair, tmp_path):
    assert_truncated_input_refused(lambda src, out: int8.run(src, out, int8.Int8Config()), tiny_pair, tmp_path)


def test_int8_outside_contract(tiny_pair, tmp_path):
    run_stage = lambda src, out: int8.run(src, out, int8.Int8Config())  # noqa: E731
    refused(run_stage, outside_contract_pair(tiny_pair, tmp_path / "broken"), tmp_path / "out", "decoder outputs")



def test_int8_can_keep_the_decoder_float(tiny_pair, tmp_path):
    out = int8.run(tiny_pair, tmp_path / "out", int8.Int8Config(graphs=("encoder",)))
    assert (tmp_path / "out" / "decoder.onnx").read_bytes() == (tiny_pair / "decoder.onnx").read_bytes()
    assert out.details["encoder"]["quantized"]["MatMulInteger"] > 0 and "decoder kept in float (int8.graphs)" in out.notes
    with pytest.raises(OptimizeError, match="int8.graphs"):
        int8.Int8Config(graphs=("joiner",))
