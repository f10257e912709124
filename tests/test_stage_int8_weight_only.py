"""int8_weight_only: MatMulNBits 8-bit weights, float activations; close to its input."""

from __future__ import annotations

import pytest
from stage_helpers import assert_contract_kept, outside_contract_pair, probe_parity, truncated_pair

from optimize.errors import OptimizeError
from optimize.stages import int8_weight_only


@pytest.fixture(scope="module")
def quantized(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("nbits") / "out"
    return dst, int8_weight_only.run(tiny_pair, dst, int8_weight_only.Int8WeightOnlyConfig())


def test_weight_only_matches_its_input(tiny_pair, quantized):
    dst, out = quantized
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error < 0.02  # 8-bit blocks of 32 weights, float activations
    assert p.teacher_forced_cosine > 0.9999
    assert_contract_kept(tiny_pair, dst)
    assert all(out.details[role]["MatMulNBits"] > 0 for role in ("encoder", "decoder"))


def test_weight_only_broken_inputs(tiny_pair, tmp_path):
    cfg = int8_weight_only.Int8WeightOnlyConfig()
    with pytest.raises(OptimizeError, match="not a readable ONNX model"):
        int8_weight_only.run(truncated_pair(tiny_pair, tmp_path / "t"), tmp_path / "out", cfg)
    with pytest.raises(OptimizeError, match="decoder outputs"):
        int8_weight_only.run(outside_contract_pair(tiny_pair, tmp_path / "c"), tmp_path / "out", cfg)
    with pytest.raises(OptimizeError, match="block_size"):
        int8_weight_only.Int8WeightOnlyConfig(block_size=48)
    assert not (tmp_path / "out").exists()
