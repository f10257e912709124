"""int8_weight_only: MatMul weights to 8-bit blocks (com.microsoft MatMulNBits), activations float.

The alternative to `int8` when dynamic activation quantization costs too much accuracy
(ASR int8 can double the error rate: ort-toolchain.md §3.3). ORT's own Whisper recipe
uses exactly this for "INT8": 8 bits, block 32, accuracy_level 4 on CPU
(onnxruntime/transformers/models/whisper/convert_to_onnx.py). MatMulNBits has CPU and
CUDA kernels. Needs the `onnx-ir` package (imported by ORT's MatMulNBitsQuantizer).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from optimize import graph
from optimize.errors import OptimizeError
from optimize.stages import GRAPHS, StageOutput, transform_pair

BITS = 8  # the stage's name says it; 4-bit would be a different stage


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    # weights per quantization block along K; smaller blocks track the weights more closely
    block_size: int = 32
    # symmetric blocks (no zero point), as ORT's Whisper recipe
    is_symmetric: bool = True
    # MatMulNBits compute type: 4 = int8 dot products on CPU (fastest), 0 = unset (fp32 compute)
    accuracy_level: int = 4
    # node-name patterns (fnmatch) left in float
    nodes_to_exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise OptimizeError(f"int8_weight_only.block_size is {self.block_size}", "use a power of two >= 16, e.g. 32")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise OptimizeError(f"int8_weight_only.accuracy_level is {self.accuracy_level}", "use 0..4 (4 = int8 compute on CPU)")


Config = Int8WeightOnlyConfig


def _quantizer():
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError as e:
        raise OptimizeError(f"onnxruntime's MatMulNBitsQuantizer cannot be imported ({e})", "pip install onnx-ir") from e
    return DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


def _quantize_graph(cfg: Int8WeightOnlyConfig, record: dict):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        algo_class, quantizer_class = _quantizer()
        model = graph.load(src)
        excluded = [n.name for n in model.graph.node if any(fnmatch.fnmatch(n.name, p) for p in cfg.nodes_to_exclude)]
        record[role] = {"excluded_nodes": excluded}
        algo = algo_class(block_size=cfg.block_size, is_symmetric=cfg.is_symmetric, accuracy_level=cfg.accuracy_level, bits=BITS)
        try:
            quantizer = quantizer_class(
                model, bits=BITS, block_size=cfg.block_size, is_symmetric=cfg.is_symmetric,
                accuracy_level=cfg.accuracy_level, nodes_to_exclude=excluded, algo_config=algo,
            )  # fmt: skip
            quantizer.process()
        except Exception as e:  # the quantizer raises assorted errors on graphs it cannot handle
            raise OptimizeError(f"MatMulNBits quantization failed on the {role}: {str(e).splitlines()[0][:300]}", "exclude the failing node with int8_weight_only.nodes_to_exclude") from e
        result = quantizer.model.model
        graph.save(result, out)
        return []

    return transform


def run(src: Path, dst: Path, cfg: Int8WeightOnlyConfig) -> StageOutput:
    """Quantize the MatMul weights of encoder and decoder of `src` into `dst`."""
    src = Path(src)
    names = [n.name for f in GRAPHS.values() for n in graph.load(src / f, load_external=False).graph.node]
    for p in cfg.nodes_to_exclude:
        if not fnmatch.filter(names, p):
            raise OptimizeError(f"int8_weight_only.nodes_to_exclude pattern {p!r} matches no node", "use node names as in the stage's input graphs")
    _quantizer()  # fail before writing anything when onnx-ir is missing
    record: dict = {}
    before, after, notes = transform_pair(src, dst, "int8_weight_only", _quantize_graph(cfg, record))
    for role in after:
        record[role]["MatMulNBits"] = after[role].get("MatMulNBits", 0)
    if not any(after[r].get("MatMulNBits", 0) for r in after):
        notes += ("no MatMul had a constant weight to quantize",)
    return StageOutput(before, after, notes, record)
