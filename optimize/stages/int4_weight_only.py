"""int4_weight_only: MatMul weights to symmetric 4-bit blocks (com.microsoft MatMulNBits).

For the decoder: a greedy or beam step multiplies one to a few rows by every decoder
weight, so the step is bound by reading 430 M weights at AED-L size, and 4-bit blocks
read half the bytes of int8. With accuracy_level 4 the CPU kernel quantizes the
activations to int8 per block and uses integer dot products. Measured on M = 1 at
decoder shapes (1280 x 5120, 16 MatMuls, 2 threads, Xeon with AVX-512 VNNI): 13.3 ms
vs 32.3 ms for dynamic int8 (DynamicQuantizeMatMul); at M = 16 it is the slower one
(49.9 vs 40.6 ms), which is why the encoder stays dynamic or static int8 (BENCHMARKS.md 9.2).

Symmetric by default because of onnxruntime #29853: on AVX2 CPUs without AVX-512, the
M = 1 kernel with zero points is about 46% off. The stage checks the host's M = 1 kernel
on each quantized graph (optimize.stages.nbits.m1_error) and refuses a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from optimize.stages import StageOutput, nbits

BITS = 4


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    # weights per quantization block along K; 32 as ORT's own int4 recipes
    block_size: int = 32
    # no zero points: onnxruntime #29853 (46% error at M = 1 on AVX2 with zero points)
    is_symmetric: bool = True
    # MatMulNBits compute type: 4 = int8 dot products on CPU (fastest), 0 = unset (fp32 compute)
    accuracy_level: int = 4
    # node-name patterns (fnmatch) left in float, e.g. the output projection "/decoder/tgt_word_prj/*"
    nodes_to_exclude: tuple[str, ...] = ()
    # what the MatMuls left out by nodes_to_exclude become: "float" (kept), or "int8" (dynamic,
    # per-channel, as the int8 stage): mixed precision in one stage
    excluded_as: str = "float"
    # graphs to quantize; the others are copied unchanged (the compute-bound encoder gains nothing)
    graphs: tuple[str, ...] = ("decoder",)

    # MatMuls left out (as excluded_as) because the n-bit blocks move the pair's outputs most there:
    # each candidate is scored alone on calibration audio (optimize.stages.sensitivity), and the
    # highest scores are left out while their weights fit in this share of the candidates'; 0 = off
    excluded_budget: float = 0.0
    # the audio the scores are measured on: a directory of audio files or a manifest (relative to
    # the working directory, as int8_static.calibration); never the eval set
    calibration: Path = Path("calibration/calib")
    calibration_samples: int = 8

    def __post_init__(self):
        nbits.check_config("int4_weight_only", self.block_size, self.accuracy_level, self.graphs, self.excluded_as, self.excluded_budget, self.calibration_samples)


Config = Int4WeightOnlyConfig


def run(src: Path, dst: Path, cfg: Int4WeightOnlyConfig) -> StageOutput:
    """Quantize the MatMul weights of the graphs in `cfg.graphs` of `src` into `dst`."""
    return nbits.run_pair(src, dst, "int4_weight_only", BITS, cfg)
