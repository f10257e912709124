"""The optimization stages and what they share.

A stage is one module with a frozen `<Name>Config` (aliased `Config`) and
`run(src, dst, cfg) -> StageOutput`, where `src` and `dst` are model directories
(encoder.onnx, decoder.onnx, tokens.txt). STAGES maps the recipe word to the module
path; modules are imported only when used, so `optimize run` never pulls in what a
recipe does not name. The runner (pipeline.py) knows nothing stage-specific.

`transform_pair` is the one shared body: it applies a per-graph transform to the
encoder and the decoder, re-attaches the metadata the tools drop or extend, verifies
the contract byte-for-byte and publishes `dst` atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import onnx

from optimize import graph
from optimize.atomic import staged_dir
from optimize.contract import (  # GRAPHS, verify_contract: re-exported for the stage modules
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    GRAPHS,
    TOKENS_FILE,
    check_io,
    model_paths,
    parse_metadata,
    verify_contract,
)
from optimize.errors import OptimizeError
from optimize.runtime.providers import ORT_ERRORS

STAGES = {
    "reexport": "optimize.stages.reexport",  # published sherpa-onnx input -> our export of its weights
    "simplify": "optimize.stages.simplify",
    "fuse": "optimize.stages.fuse",
    "fp16": "optimize.stages.fp16",
    "int8": "optimize.stages.int8",
    "int8_static": "optimize.stages.int8_static",
    "int8_weight_only": "optimize.stages.int8_weight_only",
    "int4_weight_only": "optimize.stages.int4_weight_only",
}

@dataclass(frozen=True)
class StageOutput:
    """What a stage changed, per graph ("encoder", "decoder")."""

    ops_before: dict[str, dict[str, int]]  # op type -> count, before the stage
    ops_after: dict[str, dict[str, int]]  # op type -> count, after the stage
    notes: tuple[str, ...] = ()  # facts a reader of the report needs, e.g. "no fusion pass applied"
    details: dict = field(default_factory=dict)  # stage-specific record (resolved options, excluded nodes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def load_stage(name: str) -> ModuleType:
    """Import the module of a stage named in a recipe."""
    if name not in STAGES:
        raise OptimizeError(f"unknown stage {name!r}", f"use one of {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def config_class(name: str) -> type:
    """The frozen config dataclass of a stage."""
    return load_stage(name).Config


# What the tools a stage wraps (onnxsim, onnxruntime.transformers, onnxruntime.quantization,
# onnx's checker and shape inference, ORT sessions they open) raise on a graph they cannot
# handle; a stage turns these into an OptimizeError naming the knob. Anything else
# (TypeError, AttributeError, ImportError: an API that moved after an upgrade) is a bug
# of ours and keeps its traceback instead of reading as "skip the stage".
TOOL_ERRORS = (
    RuntimeError, ValueError, KeyError, IndexError, AssertionError, NotImplementedError,
    onnx.checker.ValidationError, onnx.shape_inference.InferenceError, *ORT_ERRORS,
)  # fmt: skip


# A per-graph transform: (input .onnx path, output .onnx path, role "encoder"|"decoder").
# It writes the output file (and its external data) and may return notes.
GraphTransform = Callable[[Path, Path, str], "list[str] | None"]


def transform_pair(src: Path, dst: Path, stage: str, transform: GraphTransform) -> tuple[dict, dict, tuple[str, ...]]:
    """Apply `transform` to both graphs of `src`, verify, and publish them in `dst`.

    Returns (ops_before, ops_after, notes). `dst` appears only complete: the graphs are
    written to `<dst>.tmp/` and renamed into place, and `src` is only read.
    """
    src, dst = Path(src), Path(dst)
    _, _, tokens = model_paths(src)
    check_input(src)
    before, after, notes = {}, {}, []
    with staged_dir(dst) as tmp:
        for role, fname in GRAPHS.items():
            reference = graph.load(src / fname, load_external=False)
            before[role] = graph.op_counts(reference)
            notes += transform(src / fname, tmp / fname, role) or []
            graph.release_memory()  # before the output is read back, and before the next graph
            after[role] = restore_contract(reference, tmp / fname, f"{stage} ({role})")
            graph.release_memory()
        shutil.copyfile(tokens, tmp / TOKENS_FILE)
    return before, after, tuple(notes)


def check_input(src: Path) -> None:
    """Refuse a pair outside the contract before transforming it (I/O names and types, metadata)."""
    for role, fname in GRAPHS.items():
        model = graph.load(src / fname, load_external=False)
        inputs, outputs = graph.io_signature(model)
        io = (ENCODER_INPUTS, ENCODER_OUTPUTS) if role == "encoder" else (DECODER_INPUTS, DECODER_OUTPUTS)
        check_io(inputs, io[0], f"{role} inputs", str(src / fname))
        check_io(outputs, io[1], f"{role} outputs", str(src / fname))
        if role == "encoder":
            parse_metadata(dict(graph.metadata(model)), str(src / fname))
        for data in graph.external_files(src / fname, model):
            links = data.stat().st_nlink if data.is_file() else 1
            if links > 1:  # onnx.load refuses these ("potential hardlink attack"), deep inside a stage
                raise OptimizeError(
                    f"{data} has {links} hard links, and onnx refuses to read external data from a hard-linked file",
                    "copy the pair with `cp -r` (not `cp -l` or `cp -al`) and run on the copy",
                )


def restore_contract(reference: onnx.ModelProto, out: Path, where: str) -> dict[str, int]:
    """Re-attach `reference`'s metadata to `out`, verify its I/O, return its op counts.

    The output is read without its external data: rewriting only the .onnx keeps the
    tensors where they are, so this costs nothing for a multi-GB graph.
    """
    model = graph.load(out, load_external=False)
    want = graph.metadata(reference)
    if graph.metadata(model) != want:
        graph.set_metadata(model, want)
        onnx.save_model(model, str(out))
    verify_contract(reference, model, where)
    return graph.op_counts(model)
