"""simplify: onnxsim keeps the numbers, the contract and the dynamic T axis."""

from __future__ import annotations

import pytest
from stage_helpers import (
    assert_contract_kept,
    assert_truncated_input_refused,
    outside_contract_pair,
    probe_parity,
    refused,
)

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
    assert_truncated_input_refused(lambda src, out: simplify.run(src, out, simplify.SimplifyConfig()), tiny_pair, tmp_path)


def test_simplify_outside_contract(tiny_pair, tmp_path):
    run_stage = lambda src, out: simplify.run(src, out, simplify.SimplifyConfig())  # noqa: E731
    error = refused(run_stage, outside_contract_pair(tiny_pair, tmp_path / "broken"), tmp_path / "out", "decoder outputs")
    assert "\n" not in str(error)


@pytest.mark.parametrize("raised, surfaces_as", [(RuntimeError("onnxsim: bad graph"), "OptimizeError"), (TypeError("simplify() got an unexpected keyword"), "TypeError")])
def test_tool_errors_become_one_line_but_our_bugs_keep_their_type(tiny_pair, tmp_path, monkeypatch, raised, surfaces_as):
    """A failure of onnxsim on the graph is the user's one-line error; a TypeError (an API that moved) stays a bug."""
    from optimize.errors import OptimizeError

    onnxsim = simplify._onnxsim()

    def broken(*args, **kwargs):
        raise raised

    monkeypatch.setattr(onnxsim, "simplify", broken)
    with pytest.raises((OptimizeError, TypeError)) as e:
        simplify.run(tiny_pair, tmp_path / "out", simplify.SimplifyConfig())
    assert type(e.value).__name__ == surfaces_as
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
