"""int8: dynamic quantization (onnxruntime.quantization.quantize_dynamic), MatMul only by default.

Weights become int8 ahead of time; activations are quantized to uint8 per call by
DynamicQuantizeLinear, and ORT's CPU EP fuses the result into DynamicQuantizeMatMul /
MatMulIntegerToFloat at load (ort-toolchain.md E7). A CPU artifact: use fp16 on GPUs.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from optimize import graph
from optimize.host import cpu_flags
from optimize.errors import OptimizeError
from optimize.stages import GRAPHS, TOOL_ERRORS, StageOutput, scratch_input, sensitivity, transform_pair

# Ops quantize_dynamic can turn into integer ops (onnxruntime/quantization/registry.py
# IntegerOpsRegistry). Gemm is not among them in dynamic mode.
DYNAMIC_OPS = ("MatMul", "Conv", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization")
WEIGHT_TYPES = ("QInt8", "QUInt8")
# CPU flags with the VNNI dot-product instructions (Linux /proc/cpuinfo names)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class Int8Config:
    # op types to quantize; ConvInteger was slower than fp32 Conv on CPU (ort-toolchain.md E7)
    op_types: tuple[str, ...] = ("MatMul",)
    # per-tensor weights; per-channel fails at run time for 3-D constant weights (ORT #25489)
    per_channel: bool = False
    # QInt8 (ORT default) or QUInt8 (optimum's avx2 preset); a measured knob
    weight_type: str = "QInt8"
    # 7-bit weights avoid U8S8 saturation without VNNI; "auto" = on only without VNNI
    reduce_range: bool | str = "auto"
    # node-name patterns (fnmatch) left in float, e.g. "/encoder/layer_stack.0/*"
    nodes_to_exclude: tuple[str, ...] = ()
    # quantize only MatMuls with a constant B, so attention score/context MatMuls stay float
    matmul_const_b_only: bool = True
    # graphs to quantize; the others are copied unchanged. Keeping a small decoder fp32 is
    # the cheap fix when int8 logits flip greedy tokens (ort-toolchain.md §3.3, mitigation 5)
    graphs: tuple[str, ...] = ("encoder", "decoder")
    # MatMuls kept in float because int8 moves the pair's outputs most there: each candidate MatMul
    # is scored alone on calibration audio (optimize.stages.sensitivity: the divergence of the
    # decoder's and the CTC head's distributions from float), and the highest scores stay float
    # while their weights fit in this share of all quantizable weights; 0 = off
    keep_float_budget: float = 0.0
    # the audio those scores are measured on: a directory of wav/flac/ogg files or a manifest
    # (relative to the working directory, as int8_static.calibration); never the eval set
    calibration: Path = Path("calibration/calib")
    # calibration utterances scored (the first, in name / manifest order)
    calibration_samples: int = 8

    def __post_init__(self):
        bad = [op for op in self.op_types if op not in DYNAMIC_OPS]
        if bad or not self.op_types:
            raise OptimizeError(f"int8.op_types {list(self.op_types)} has ops dynamic quantization cannot quantize: {bad}", f"use some of {', '.join(DYNAMIC_OPS)}")
        if self.weight_type not in WEIGHT_TYPES:
            raise OptimizeError(f"int8.weight_type is {self.weight_type!r}", f"use one of {', '.join(WEIGHT_TYPES)}")
        if not self.graphs or set(self.graphs) - set(GRAPHS):
            raise OptimizeError(f"int8.graphs is {list(self.graphs)}", f"name one or both of {', '.join(GRAPHS)}")
        if self.reduce_range not in (True, False, "auto"):
            raise OptimizeError(f"int8.reduce_range is {self.reduce_range!r}", "use true, false or auto (on only without VNNI)")
        sensitivity.check_config("int8.keep_float_budget", self.keep_float_budget, "int8.calibration_samples", self.calibration_samples, 0.1)
        if self.keep_float_budget and "MatMul" not in self.op_types:
            raise OptimizeError("int8.keep_float_budget scores MatMuls and int8.op_types has no MatMul", "add MatMul to op_types or set keep_float_budget: 0")


Config = Int8Config


def resolve_reduce_range(setting: bool | str, flags: frozenset[str]) -> bool:
    """`auto` -> True only when the CPU lacks VNNI (ORT quantization docs, "reduce-range")."""
    if setting == "auto":
        return not any(f in flags for f in VNNI_FLAGS)
    return bool(setting)


def _excluded(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    return [n.name for n in model.graph.node if any(fnmatch.fnmatch(n.name, p) for p in patterns)]


def _check_patterns(src: Path, patterns: tuple[str, ...]) -> None:
    """A pattern that matches no node in either graph is a recipe error, not a no-op."""
    names = [n.name for f in GRAPHS.values() for n in graph.load(src / f, load_external=False).graph.node]
    for p in patterns:
        if not fnmatch.filter(names, p):
            raise OptimizeError(f"int8.nodes_to_exclude pattern {p!r} matches no node", "use node names as in the stage's input graphs (e.g. from Netron)")


def _keep_float(src: Path, cfg: Int8Config, reduce_range: bool) -> tuple[dict[str, list[str]], dict]:
    """The MatMuls to keep float by measured sensitivity, per graph, and the record of why."""
    rounding = sensitivity.Rounding(8, cfg.per_channel, reduce_range)
    return sensitivity.select(src, cfg.graphs, cfg.nodes_to_exclude, rounding, cfg.calibration, cfg.calibration_samples, cfg.keep_float_budget)


def _quantize_graph(cfg: Int8Config, reduce_range: bool, record: dict, keep_float: dict[str, list[str]]):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = graph.load(src, load_external=False)
        if role not in cfg.graphs:
            record[role] = {"excluded_nodes": "all (not in int8.graphs)"}
            for f in graph.files_of(src):
                shutil.copyfile(f, out.parent / f.name)
            return [f"{role} kept in float (int8.graphs)"]
        excluded = _excluded(model, cfg.nodes_to_exclude) + keep_float.get(role, [])
        record[role] = {"excluded_nodes": excluded}
        try:
            with scratch_input(src, out.parent, role) as linked:
                quantize_dynamic(
                    linked,  # by path: the quantizer runs shape inference on the file, fine above 2 GB
                    out,
                    op_types_to_quantize=list(cfg.op_types),
                    per_channel=cfg.per_channel,
                    reduce_range=reduce_range,
                    weight_type=QuantType[cfg.weight_type],
                    nodes_to_exclude=excluded,
                    use_external_data_format=graph.needs_external_data(model),
                    extra_options={
                        "MatMulConstBOnly": cfg.matmul_const_b_only,
                        # fused graphs carry com.microsoft ops ONNX cannot type (ort-toolchain.md E6)
                        "DefaultTensorType": onnx.TensorProto.FLOAT,
                    },
                )
        except TOOL_ERRORS as e:  # the tool cannot handle this graph (stages.TOOL_ERRORS)
            raise OptimizeError(f"quantize_dynamic failed on the {role}: {str(e).splitlines()[0][:300]}", "exclude the failing node with int8.nodes_to_exclude") from e
        return []

    return transform


def run(src: Path, dst: Path, cfg: Int8Config) -> StageOutput:
    """Quantize encoder and decoder of `src` into `dst`."""
    src = Path(src)
    _check_patterns(src, cfg.nodes_to_exclude)
    reduce_range = resolve_reduce_range(cfg.reduce_range, cpu_flags())
    record: dict = {}
    keep_float: dict[str, list[str]] = {}
    if cfg.keep_float_budget:
        keep_float, record["sensitivity"] = _keep_float(src, cfg, reduce_range)
    before, after, notes = transform_pair(src, dst, "int8", _quantize_graph(cfg, reduce_range, record, keep_float), cfg)
    for role in after:
        record[role]["quantized"] = {op: after[role].get(op, 0) for op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear")}
    if not any(after[r].get("DynamicQuantizeLinear", 0) for r in cfg.graphs):
        notes += ("quantize_dynamic quantized no node",)
    if cfg.keep_float_budget:
        notes += (sensitivity.note(record["sensitivity"], keep_float, "kept {n} MatMul(s) float", "the quantizable weights", "int8"),)
    return StageOutput(before, after, notes, {"reduce_range": reduce_range, **record})
