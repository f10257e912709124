"""The stage cache: keys change with inputs, settings, code and versions; records are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimize import cache


@pytest.fixture
def pair_copy(tiny_pair, tmp_path):
    from stage_helpers import copy_pair

    return copy_pair(tiny_pair, tmp_path / "pair")


def test_key_depends_on_everything_that_decides_the_result(pair_copy, monkeypatch):
    inputs = cache.digests(pair_copy)
    k = cache.key("int8", inputs, {"per_channel": False})
    assert len(k) == 64  # the full sha256
    assert cache.key("int8", inputs, {"per_channel": False}) == k
    assert cache.key("int8", inputs, {"per_channel": True}) != k
    assert cache.key("fp16", inputs, {"per_channel": False}) != k
    (pair_copy / "tokens.txt").write_text((pair_copy / "tokens.txt").read_text() + "x 999\n")
    assert cache.key("int8", cache.digests(pair_copy), {"per_channel": False}) != k
    monkeypatch.setattr(cache, "tool_versions", lambda: {"onnxruntime": "9.9.9"})
    assert cache.key("int8", inputs, {"per_channel": False}) != k
    monkeypatch.setattr(cache, "host", lambda: {"machine": "other", "cpu_flags": []})
    assert cache.key("int8", inputs, {"per_channel": False}) != k


def test_digests_cover_every_file_of_a_pair(pair_copy):
    assert set(cache.digests(pair_copy)) == {"encoder.onnx", "decoder.onnx", "tokens.txt"}


def test_finished_requires_matching_key_and_untouched_outputs(pair_copy):
    record = {"key": "k1", "outputs": cache.digests(pair_copy)}
    cache.write_record(pair_copy, record)
    assert not list(pair_copy.glob("*.tmp"))
    assert cache.finished(pair_copy, "k1") == record
    assert cache.finished(pair_copy, "k2") is None
    enc = pair_copy / "encoder.onnx"
    enc.write_bytes(enc.read_bytes()[:-1] + b"\0")
    assert cache.finished(pair_copy, "k1") is None
    enc.unlink()
    assert cache.finished(pair_copy, "k1") is None


def test_unreadable_record_means_redo(tmp_path):
    (tmp_path / cache.RECORD).write_text("{not json")
    assert cache.read_record(tmp_path) is None
    assert cache.finished(tmp_path, "k") is None


def test_host_cpu_flags_and_model_from_cpuinfo(tmp_path):
    from optimize import host

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nmodel name\t: Some CPU @ 2.10GHz\nflags\t\t: fpu avx2 avx512_vnni sse\n")
    assert host.cpu_flags(info) == frozenset({"fpu", "avx2", "avx512_vnni", "sse"})
    assert host.cpu_flags(tmp_path / "absent") == frozenset()
    assert host.cpu_model(info) == "Some CPU @ 2.10GHz"


def test_code_digest_changes_with_source():
    a = cache.code_digest("optimize.stages.int8")
    assert a == cache.code_digest("optimize.stages.int8") != cache.code_digest("optimize.stages.fp16")
    json.dumps(cache.tool_versions())  # plain strings


def test_reexport_key_covers_the_exporter_and_the_lift(monkeypatch, tmp_path):
    """An edit of optimize/export (lift, exporter) redoes a cached reexport, not only an edit of the stage."""
    import importlib.util

    from optimize import pipeline

    before = {name: pipeline.stage_code(name) for name in ("reexport", "simplify")}
    real = importlib.util.find_spec
    for module in ("optimize.export.lift", "optimize.export.exporter"):
        edited = tmp_path / f"{module}.py"
        edited.write_bytes(Path(real(module).origin).read_bytes() + b"\n# edited\n")
        spec = importlib.util.spec_from_file_location(module, edited)
        with monkeypatch.context() as m:
            m.setattr(importlib.util, "find_spec", lambda name, *a, _s=spec, _m=module: _s if name == _m else real(name, *a))
            assert pipeline.stage_code("reexport") != before["reexport"], module
            assert pipeline.stage_code("simplify") == before["simplify"]
