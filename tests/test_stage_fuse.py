"""fuse: ORT's fusions at opt_level 0 without shape inference keep the numbers and the contract."""

from __future__ import annotations

import pytest
from stage_helpers import (
    assert_contract_kept,
    assert_one_line_failure,
    assert_truncated_input_refused,
    cli,
    outside_contract_pair,
    probe_parity,
    refused,
    tiny_recipe,
)

from optimize.errors import OptimizeError
from optimize.stages import fuse


@pytest.fixture(scope="module")
def fused(tiny_pair, tmp_path_factory):
    dst = tmp_path_factory.mktemp("fuse") / "out"
    return dst, fuse.run(tiny_pair, dst, fuse.FuseConfig())


def test_fuse_matches_its_input(tiny_pair, fused):
    dst, _ = fused
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error < 1e-5
    assert p.teacher_forced_cosine > 0.99999
    assert p.greedy_identical == 1.0


def test_fuse_reports_what_it_fused(tiny_pair, fused):
    dst, out = fused
    assert_contract_kept(tiny_pair, dst)
    assert out.details["fused_ops"]["encoder"].get("SkipLayerNormalization", 0) > 0
    assert "no FireRedASR fusion passes ran (none configured)" in out.notes


def test_fuse_runs_registered_firered_passes(tiny_pair, tmp_path, monkeypatch):
    seen = []

    def count_softmax(model, role):  # a stand-in pass: reports, rewrites nothing
        seen.append(role)
        return {"fused": sum(n.op_type == "Softmax" for n in model.graph.node)}

    monkeypatch.setitem(fuse.FIRERED_FUSIONS, "count_softmax", count_softmax)
    out = fuse.run(tiny_pair, tmp_path / "out", fuse.FuseConfig(firered_fusions=("count_softmax",)))
    assert seen == ["encoder", "decoder"]
    assert out.details["firered_fusions"]["decoder"]["count_softmax"]["fused"] == 4  # 2 layers x (self + cross)


def test_fuse_config_errors_name_the_fix():
    with pytest.raises(OptimizeError, match="did you mean 'skip_layer_norm'"):
        fuse.FuseConfig(disable=("skip_layernorm",))
    with pytest.raises(OptimizeError, match="none registered yet|registered passes"):
        fuse.FuseConfig(firered_fusions=("attention_typo",))


def test_fuse_truncated_input(tiny_pair, tmp_path):
    assert_truncated_input_refused(lambda src, out: fuse.run(src, out, fuse.FuseConfig()), tiny_pair, tmp_path)


def test_fuse_outside_contract(tiny_pair, tmp_path):
    run_stage = lambda src, out: fuse.run(src, out, fuse.FuseConfig())  # noqa: E731
    refused(run_stage, outside_contract_pair(tiny_pair, tmp_path / "broken"), tmp_path / "out", "decoder outputs")



def test_fuse_with_shape_inference_breaks_the_encoder_and_the_run_says_so(tiny_pair, tmp_path):
    """ORT's symbolic shape inference deletes rel-shift Reshapes (ort-toolchain.md E2): caught by the load check."""
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [{"fuse": {"enable_shape_inference": True}}], tmp_path / "run")
    assert_one_line_failure(cli("run", recipe), "stage fuse failed load: onnxruntime failed at run time", "broadcast", code=1)
    assert not (tmp_path / "run" / "final").exists()


def test_fuse_with_firered_attention_matches_its_input(tiny_pair, tmp_path):
    dst = tmp_path / "out"
    out = fuse.run(tiny_pair, dst, fuse.FuseConfig(firered_fusions=("attention",)))
    assert_contract_kept(tiny_pair, dst)
    p = probe_parity(tiny_pair, dst)
    assert p.cross_kv_rel_error < 1e-4
    assert p.teacher_forced_cosine > 0.99999
    assert p.greedy_identical == 1.0
    # one MultiHeadAttention per attention layer: 2 encoder blocks; 2 decoder layers x (self + cross)
    assert out.details["fused_ops"]["encoder"].get("MultiHeadAttention", 0) == 2
    assert out.details["fused_ops"]["decoder"].get("MultiHeadAttention", 0) == 4


def test_fuse_firered_graphs_keeps_the_other_graph_unfused(tiny_pair, tmp_path):
    dst = tmp_path / "out"
    out = fuse.run(tiny_pair, dst, fuse.FuseConfig(firered_fusions=("attention",), firered_graphs=("decoder",)))
    assert out.details["fused_ops"]["encoder"].get("MultiHeadAttention", 0) == 0
    assert out.details["fused_ops"]["decoder"].get("MultiHeadAttention", 0) == 4
    p = probe_parity(tiny_pair, dst)
    assert p.teacher_forced_cosine > 0.99999 and p.greedy_identical == 1.0
    with pytest.raises(OptimizeError, match="unknown graph 'joiner'"):
        fuse.FuseConfig(firered_graphs=("joiner",))
