"""fp16: ORT's float16 conversion (onnxruntime.transformers OnnxModel), float32 at the boundary.

ORT's converter, not onnxconverter-common's defaults: it keeps fp16's real range
(max_finite_val 65504, where onnxconverter-common clamps at 1e4, too weak for the
decoder's 1e10 masks) and takes keep_io_types as a list. Inputs and outputs stay
float32 because published runtimes (sherpa-onnx) allocate float caches and read float
logits (shared/reference/published-onnx-contract.md §4). Run it after `fuse`: blocked
nodes get Casts, and fusing first keeps their number down (ort-toolchain.md E9).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import onnx

from optimize import graph
from optimize.errors import OptimizeError
from optimize.stages import TOOL_ERRORS, StageOutput, transform_pair


@dataclass(frozen=True)
class Fp16Config:
    # op types kept in float32 on top of ORT's float16.DEFAULT_OP_BLOCK_LIST (Range, TopK, CumSum, ...);
    # escalate LayerNormalization/SkipLayerNormalization -> Softmax only if the error rate moves
    keep_fp32_ops: tuple[str, ...] = ()
    # node-name patterns (fnmatch) kept in float32, e.g. the first/last encoder blocks
    keep_fp32_nodes: tuple[str, ...] = ()
    # fp16's largest finite value; larger float32 constants are clamped to it
    max_finite_val: float = 65504.0
    # smallest positive fp16 (subnormal); smaller magnitudes become 0
    min_positive_val: float = 5.96e-08
    # symbolic shape inference types ORT's fused ops; ONNX shape inference cannot, and fails above 2 GB
    use_symbolic_shape_infer: bool = True

    def __post_init__(self):
        if not 0 < self.min_positive_val < self.max_finite_val <= 65504.0:
            raise OptimizeError(
                f"fp16.min_positive_val {self.min_positive_val} / max_finite_val {self.max_finite_val} are not a valid fp16 range",
                "use 0 < min_positive_val < max_finite_val <= 65504",
            )


Config = Fp16Config


def _float_io(model: onnx.ModelProto) -> list[str]:
    """Names of every float32 graph input and output: all of them stay float32."""
    values = list(model.graph.input) + list(model.graph.output)
    return [v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]


def _check_applicable(src: Path, cfg: Fp16Config) -> None:
    """An op type or node pattern that matches nothing in either graph is a recipe error."""
    from optimize.stages import GRAPHS

    models = [graph.load(Path(src) / f, load_external=False) for f in GRAPHS.values()]
    ops = set().union(*(graph.op_counts(m) for m in models))
    names = [n.name for m in models for n in m.graph.node]
    for op in cfg.keep_fp32_ops:
        if op not in ops:
            raise OptimizeError(f"fp16.keep_fp32_ops names {op!r}, which occurs in neither graph", f"the graphs have {', '.join(sorted(ops))}")
    for pattern in cfg.keep_fp32_nodes:
        if not fnmatch.filter(names, pattern):
            raise OptimizeError(f"fp16.keep_fp32_nodes pattern {pattern!r} matches no node", "use node names as in the stage's input graphs (e.g. from Netron)")


def _convert_graph(cfg: Fp16Config, casts: dict):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        from onnxruntime.transformers import float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(graph.load(src))
        nodes = [n.name for n in model.model.graph.node if any(fnmatch.fnmatch(n.name, p) for p in cfg.keep_fp32_nodes)]
        try:
            model.convert_float_to_float16(
                use_symbolic_shape_infer=cfg.use_symbolic_shape_infer,
                keep_io_types=_float_io(model.model),
                op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(cfg.keep_fp32_ops),
                node_block_list=nodes,
                max_finite_val=cfg.max_finite_val,
                min_positive_val=cfg.min_positive_val,
            )
        except TOOL_ERRORS as e:  # the tool cannot handle this graph (stages.TOOL_ERRORS)
            raise OptimizeError(f"fp16 conversion failed on the {role}: {str(e).splitlines()[0][:300]}", "set fp16.use_symbolic_shape_infer or block the failing op with fp16.keep_fp32_ops") from e
        casts[role] = {"kept_fp32_nodes": len(nodes)}
        model.save_model_to_file(str(out), use_external_data_format=graph.needs_external_data(model.model))
        return []

    return transform


def run(src: Path, dst: Path, cfg: Fp16Config) -> StageOutput:
    """Convert encoder and decoder of `src` to float16 in `dst`."""
    _check_applicable(Path(src), cfg)
    record: dict = {}
    before, after, notes = transform_pair(src, dst, "fp16", _convert_graph(cfg, record))
    for role in after:
        record[role]["casts"] = after[role].get("Cast", 0) - before[role].get("Cast", 0)
    return StageOutput(before, after, notes, record)
