"""simplify: onnxsim keeps the numbers, the contract and the dynamic T axis."""

from __future__ import annotations

import pytest
from stage_helpers import (
    assert_contract_kept,
    assert_one_line_failure,
    cli,
    outside_contract_pair,
    probe_parity,
    tiny_recipe,
    truncated_pair,
)

from optimize import graph
from optimize.errors import OptimizeError
from optimize.stages import simplify


@pytest.fixture(scope="module")
def simplified(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("simplify") / "out"
    out = simplify.run(tiny_pair, dst, simplify.SimplifyConfig())
    return dst, out


def test_simplify_matches_its_input(tiny_pair, simplified):
    dst, _ = simplified
    p = probe_parity(tiny_pair, dst)  # probes of 150, 420, 730 frames: the T axis stayed dynamic
    assert p.cross_kv_rel_error < 1e-5
    assert p.teacher_forced_cosine > 0.99999
    assert p.greedy_identical == 1.0


def test_simplify_keeps_contract_and_mask_overridable(tiny_pair, simplified):
    dst, out = simplified
    assert_contract_kept(tiny_pair, dst)
    assert not dst.with_name(dst.name + ".tmp").exists()
    # it simplified something: fewer nodes in both graphs
    for role in ("encoder", "decoder"):
        assert sum(out.ops_after[role].values()) < sum(out.ops_before[role].values())
        assert out.ops_after[role].get("Gemm", 0) == 0  # MatMul kept for int8


def test_simplify_truncated_input(tiny_pair, tmp_path):
    src = truncated_pair(tiny_pair, tmp_path / "broken")
    with pytest.raises(OptimizeError, match="not a readable ONNX model") as e:
        simplify.run(src, tmp_path / "out", simplify.SimplifyConfig())
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_simplify_outside_contract(tiny_pair, tmp_path):
    src = outside_contract_pair(tiny_pair, tmp_path / "broken")
    with pytest.raises(OptimizeError, match="decoder outputs") as e:
        simplify.run(src, tmp_path / "out", simplify.SimplifyConfig())
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_simplify_gate_that_cannot_be_met(tiny_pair, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, ["simplify"], tmp_path / "run",
                         gates={"max_error_rate_increase": 0.5, "min_token_agreement": 0.0, "min_speedup": 1000})  # fmt: skip
    assert_one_line_failure(cli("run", recipe), "stage simplify failed", "min_speedup 1000")
    assert not (tmp_path / "run" / "final").exists()
    assert graph.load(tmp_path / "run" / "1-simplify" / "encoder.onnx")  # kept for inspection
