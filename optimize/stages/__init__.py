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

import contextlib
import dataclasses
import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import numpy as np
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
# Modules a stage's output depends on beyond its own: the cache key hashes their source too, so
# an edit of the lift or the exporter redoes a cached reexport.
STAGE_DEPENDS = {
    "reexport": ("optimize.export.lift", "optimize.export.exporter", "optimize.export.model", "optimize.export.checkpoint",
                 "optimize.runtime.features", "optimize.contract", "optimize.evaluate.parity"),  # fmt: skip
    "int8": ("optimize.stages.sensitivity", "optimize.stages.int8_static"),  # keep_float_budget's scores and calibration audio
    "int8_weight_only": ("optimize.stages.nbits", "optimize.stages.sensitivity", "optimize.stages.int8_static"),
    "int4_weight_only": ("optimize.stages.nbits", "optimize.stages.sensitivity", "optimize.stages.int8_static"),
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


# What a graph is, read from its ops and weights, decides which stages apply to it.
QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulNBits",
                 "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "QAttention", "QGemm")  # fmt: skip
CONTRIB_DOMAIN = "com.microsoft"  # ORT's fused ops (Attention, SkipLayerNormalization, ...) live here
QUANTIZING = ("int8", "int8_static", "int8_weight_only", "int4_weight_only")  # stages that quantize their input
ALREADY_QUANTIZED_FIX = "start from the fp32/fp16 files or the checkpoint"


@dataclass(frozen=True)
class GraphKind:
    """What one graph of a pair is, as far as stage order is concerned."""

    precision: str  # "fp32" | "fp16" | "int8" (any quantized op)
    fused: bool  # holds ORT contrib (com.microsoft) ops, i.e. fuse already ran

    def __str__(self) -> str:
        return self.precision + (" fused" if self.fused else "")


def graph_kind(model: onnx.ModelProto) -> GraphKind:
    """Precision and fusion of a graph, from its ops and its weights' element types (no external data needed)."""
    ops = {n.op_type for n in model.graph.node}
    if ops & set(QUANTIZED_OPS):
        precision = "int8"
    else:
        counts = {onnx.TensorProto.FLOAT: 0, onnx.TensorProto.FLOAT16: 0}
        for t in model.graph.initializer:
            if t.data_type in counts:
                counts[t.data_type] += int(np.prod(t.dims)) if t.dims else 1
        precision = "fp16" if counts[onnx.TensorProto.FLOAT16] > counts[onnx.TensorProto.FLOAT] else "fp32"
    return GraphKind(precision, any(n.domain == CONTRIB_DOMAIN for n in model.graph.node))


def _pair_kinds(src: Path) -> dict[str, GraphKind]:
    return {role: graph_kind(graph.load(Path(src) / f, load_external=False)) for role, f in GRAPHS.items()}


def pair_kind(src: Path) -> str:
    """A pair's kind in words, e.g. "fp32" or "int8 fused" (the encoder's, and the decoder's when it differs)."""
    kinds = _pair_kinds(src)
    if kinds["encoder"] == kinds["decoder"]:
        return str(kinds["encoder"])
    return f"{kinds['encoder']} encoder, {kinds['decoder']} decoder"


def _touched(stage: str, cfg: object) -> tuple[str, ...]:
    """The graphs a stage changes: its `graphs` option, the encoder for int8_static, else both."""
    return ("encoder",) if stage == "int8_static" else tuple(getattr(cfg, "graphs", GRAPHS))


@contextlib.contextmanager
def scratch_input(src: Path, out_dir: Path, role: str) -> Iterator[Path]:
    """`src` (an .onnx file) as seen from a scratch directory inside `out_dir`, removed afterwards.

    onnxruntime's quantizers write `<input>-inferred.onnx` next to the file they are given;
    handed this path, they write into our own output's directory, never beside the input.
    A symbolic link where possible; onnx refuses external data behind a link (or a hard
    link), so a graph with external data is copied (one more copy of the weights, > 2 GB only).
    """
    scratch = out_dir / f".input-{role}"
    scratch.mkdir()
    try:
        external = graph.external_files(src)
        for f in [src, *external]:
            if external:
                shutil.copyfile(f, scratch / f.name)
            else:
                (scratch / f.name).symlink_to(Path(f).resolve())
        yield scratch / src.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _refusal(stage: str, role: str, kind: GraphKind, cfg: object) -> tuple[str, str] | None:
    """Why `stage` cannot run on a graph of this kind, and the fix; None when it can."""
    if stage in QUANTIZING:
        touched = _touched(stage, cfg)
        if role in touched and kind.precision == "int8":
            return f"the {role} is already quantized", ALREADY_QUANTIZED_FIX
        if role in touched and kind.precision == "fp16":
            return f"{stage} needs float32 graphs and the {role} is fp16", f"quantize the fp32 pair: {ALREADY_QUANTIZED_FIX}, with {stage} in place of fp16"
    if stage == "fp16" and kind.precision != "fp32":
        fix = "drop the fp16 stage" if kind.precision == "fp16" else f"use fp16 in place of int8 and {ALREADY_QUANTIZED_FIX}"
        return f"fp16 needs float32 graphs and the {role} is already {kind.precision}", fix
    if stage == "fuse" and kind.precision != "fp32":
        return f"fuse matches float32 patterns and the {role} is already {kind.precision}", f"put fuse before {kind.precision} in the stages"
    if stage == "fuse" and kind.fused:
        return f"the {role} is already fused (it holds {CONTRIB_DOMAIN} ops)", "drop the fuse stage"
    return None


def _after(stage: str, role: str, kind: GraphKind, cfg: object) -> GraphKind:
    """The kind of a graph after `stage` ran on it."""
    if stage in QUANTIZING and role in _touched(stage, cfg):
        return dataclasses.replace(kind, precision="int8")
    if stage == "fp16":
        return dataclasses.replace(kind, precision="fp16")
    if stage == "fuse":
        return dataclasses.replace(kind, fused=True)
    if stage == "reexport":  # a published pair's weights, re-exported by our exporter
        return GraphKind("fp32", False)
    return kind


def check_plan(src: Path, stages: list[tuple[str, object]]) -> None:
    """Refuse, before anything runs, a stage list that does not fit what the graphs of `src` are.

    `stages` is [(recipe word, Config)]; each stage's effect on precision and fusion is
    followed through the list, so int8 twice, int8 before fuse, fp16 after int8 all fail here.
    """
    kinds = start = _pair_kinds(src)
    for index, (name, cfg) in enumerate(stages):
        for role in GRAPHS:
            why = _refusal(name, role, kinds[role], cfg)
            if why:
                earlier = "" if kinds[role] == start[role] else " (after the stages before it)"
                raise OptimizeError(f"stages[{index}] {name}: {why[0]}{earlier}", why[1])
        kinds = {role: _after(name, role, kinds[role], cfg) for role in GRAPHS}


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


def transform_pair(src: Path, dst: Path, stage: str, transform: GraphTransform, cfg: object = None) -> tuple[dict, dict, tuple[str, ...]]:
    """Apply `transform` to both graphs of `src`, verify, and publish them in `dst`.

    Returns (ops_before, ops_after, notes). `dst` appears only complete: the graphs are
    written to `<dst>.tmp/` and renamed into place, and `src` is only read.
    """
    src, dst = Path(src), Path(dst)
    _, _, tokens = model_paths(src)
    check_input(src)
    check_plan(src, [(stage, cfg)])
    check_room(src, dst.parent)
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


# What a stage may write, as a multiple of its input pair's size: the output plus the
# tools' scratch (the quantizer's shape-inferred copy). The tools write from C++, which
# truncates silently on a full disk ("Wire format was corrupt" later), so room is checked
# before the stage starts rather than diagnosed after.
ROOM_FACTOR = 2.0


def check_room(src: Path, out_dir: Path) -> None:
    """Refuse to start a stage that cannot fit: too little free disk, or a file-size limit (ulimit -f) below its files."""
    import resource

    sizes = [f.stat().st_size for name in GRAPHS.values() for f in graph.files_of(src / name)]
    out_dir.mkdir(parents=True, exist_ok=True)
    need, free = int(sum(sizes) * ROOM_FACTOR), shutil.disk_usage(out_dir).free
    if free < need:
        raise OptimizeError(f"{out_dir} has {free / 1e6:.0f} MB free and the stage may write {need / 1e6:.0f} MB", "free disk space, or pass an -o/--output on a larger disk")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < max(sizes) * 1.1 + 2**20:
        raise OptimizeError(f"the file-size limit (ulimit -f) is {limit} bytes and the stage writes files of about {max(sizes)} bytes", "raise it: ulimit -f unlimited")


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
