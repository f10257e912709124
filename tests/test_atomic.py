"""optimize.atomic: a directory or file appears complete or not at all."""

from __future__ import annotations

import pytest

from optimize import atomic


def test_staged_dir_replaces_the_old_directory_only_on_success(tmp_path):
    dst = tmp_path / "pair"
    dst.mkdir()
    (dst / "old.onnx").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.staged_dir(dst) as tmp:
            (tmp / "new.onnx").write_text("half")
            raise RuntimeError("stage failed")
    assert [p.name for p in dst.iterdir()] == ["old.onnx"] and not atomic.temp_path(dst).exists()
    with atomic.staged_dir(dst) as tmp:
        (tmp / "new.onnx").write_text("new")
    assert [p.name for p in dst.iterdir()] == ["new.onnx"] and not atomic.temp_path(dst).exists()


def test_copy_files_leaves_the_sources_and_write_bytes_no_temp(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    out = atomic.copy_files([src / "a.txt"], tmp_path / "out")
    assert (out / "a.txt").read_bytes() == b"a" and (src / "a.txt").read_bytes() == b"a"
    atomic.write_bytes(tmp_path / "r.json", b"{}")
    atomic.write_bytes(tmp_path / "r.json", b"{\"x\": 1}")
    assert (tmp_path / "r.json").read_bytes() == b"{\"x\": 1}" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.json", "src"]
