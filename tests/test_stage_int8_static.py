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
    return dst, int8_static.run(tiny_pair, dst, cfg)


def test_static_int8_matches_its_input(tiny_pair, quantized):
    dst, out = quantized
    p = probe_parity(tiny_pair, dst)
    # ranges come from 4 real utterances, the probes are N(0, 1) features: some activations clip
    assert p.cross_kv_rel_error < 0.15
    assert p.teacher_forced_cosine > 0.999
    assert_contract_kept(tiny_pair, dst)
    assert sum(out.details["quantized"].values()) > 0 and out.details["calibration"]["files"] == 4
    assert (dst / "decoder.onnx").read_bytes() == (tiny_pair / "decoder.onnx").read_bytes()
    assert out.ops_after["encoder"].get("DynamicQuantizeLinear", 0) == 0  # no run-time range search


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
