"""Content-addressed stage cache: a stage directory is reused only if its key matches.

key = sha256(input file digests + stage name + canonical JSON config + tool versions
+ host CPU features). The full digest is kept. Each stage directory holds a
`stage.json` record (config, versions, input/output digests, what changed, metrics);
it is written last and atomically, so a killed run leaves either a finished record or
none, and a directory without a matching record is redone. Evaluation results live in
the same record under their own key (model digests + evaluation settings), so a gate
change re-judges cached metrics without re-running anything.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

from optimize import graph
from optimize.contract import model_paths
from optimize.host import cpu_flags
from optimize.errors import OptimizeError

RECORD = "stage.json"
# Tools whose version changes what a stage writes or what an evaluation measures.
TOOLS = ("optimize", "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "numpy")
# CPU features that change what a stage writes (int8 reduce_range: auto) or how fast it runs.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c", "asimd")


def tool_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing onnxsim would import torch)."""
    out = {}
    for name in TOOLS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def host() -> dict[str, object]:
    """The host facts that enter the key: architecture and the CPU_FLAGS present."""
    return {"machine": platform.machine(), "cpu_flags": sorted(set(CPU_FLAGS) & cpu_flags())}


def pair_files(model_dir: Path) -> list[Path]:
    """The files of a pair in a fixed order: each graph with its external data, then tokens."""
    enc, dec, tokens = model_paths(Path(model_dir))  # a published pair's own names (encoder.int8.onnx, ...)
    return [*graph.files_of(enc), *graph.files_of(dec), tokens]


def digests(model_dir: Path) -> dict[str, str]:
    """sha256 of every file of a pair, by file name."""
    return {p.name: graph.sha256_files([p]) for p in pair_files(model_dir)}


def code_digest(*modules: str) -> str:
    """sha256 of our own modules' source, found without importing them: a code change redoes the work."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        h.update(Path(importlib.util.find_spec(name).origin).read_bytes())  # type: ignore[union-attr,arg-type]
    return h.hexdigest()


def canonical(obj: object) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def key(kind: str, inputs: dict[str, str], settings: dict) -> str:
    """Full sha256 over what determines a result: input digests, settings, versions, host."""
    blob = canonical({"kind": kind, "inputs": inputs, "settings": settings, "versions": tool_versions(), "host": host()})
    return hashlib.sha256(blob.encode()).hexdigest()


def read_record(stage_dir: Path) -> dict | None:
    """The stage.json of a directory, or None when absent or unreadable (then: redo)."""
    try:
        return json.loads((Path(stage_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def write_record(stage_dir: Path, record: dict) -> None:
    """Write stage.json atomically (temp file + rename)."""
    path = Path(stage_dir) / RECORD
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finished(stage_dir: Path, want_key: str) -> dict | None:
    """The record if `stage_dir` holds a finished stage with this key and untouched outputs."""
    record = read_record(stage_dir)
    if not record or record.get("key") != want_key:
        return None
    try:
        if digests(stage_dir) != record.get("outputs"):
            return None  # edited or partly deleted since: redo
    except (OSError, OptimizeError):  # a missing or unreadable file: not finished
        return None
    return record
