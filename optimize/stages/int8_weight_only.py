"""int8_weight_only: MatMul weights to 8-bit blocks (com.microsoft MatMulNBits), activations float.

The alternative to `int8` when dynamic activation quantization costs too much accuracy
(ASR int8 can double the error rate: ort-toolchain.md §3.3). ORT's own Whisper recipe
uses exactly this for "INT8": 8 bits, block 32, accuracy_level 4 on CPU
(onnxruntime/transformers/models/whisper/convert_to_onnx.py). MatMulNBits has CPU and
CUDA kernels. The body is shared with int4_weight_only (optimize.stages.nbits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optimize.stages import StageOutput, nbits

BITS = 8  # the stage's name says it; int4_weight_only is the 4-bit stage


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
    # what the MatMuls left out by nodes_to_exclude become: "float" (kept), or "int8" (dynamic,
    # per-channel, as the int8 stage): mixed precision in one stage
    excluded_as: str = "float"
    # graphs to quantize; the others are copied unchanged
    graphs: tuple[str, ...] = ("encoder", "decoder")

    # MatMuls left out (as excluded_as) because the n-bit blocks move the pair's outputs most there:
    # each candidate is scored alone on calibration audio (optimize.stages.sensitivity), and the
    # highest scores are left out while their weights fit in this share of the candidates'; 0 = off
    excluded_budget: float = 0.0
    # the audio the scores are measured on: a directory of audio files or a manifest (relative to
    # the working directory, as int8_static.calibration); never the eval set
    calibration: Path = Path("calibration/calib")
    calibration_samples: int = 8

    def __post_init__(self):
        nbits.check_config("int8_weight_only", self.block_size, self.accuracy_level, self.graphs, self.excluded_as, self.excluded_budget, self.calibration_samples)


Config = Int8WeightOnlyConfig


def run(src: Path, dst: Path, cfg: Int8WeightOnlyConfig) -> StageOutput:
    """Quantize the MatMul weights of the graphs in `cfg.graphs` of `src` into `dst`."""
    return nbits.run_pair(src, dst, "int8_weight_only", BITS, cfg)
