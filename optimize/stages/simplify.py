"""simplify: onnxsim constant folding and shape cleanup, dynamic axes kept.

onnxsim 0.8.1 is pinned in pyproject.toml: the 0.8.x line (onnxsim org) is a much
larger package than 0.4.x and behaves differently.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from optimize import graph
from optimize.errors import OptimizeError
from optimize.stages import TOOL_ERRORS, StageOutput, transform_pair


@dataclass(frozen=True)
class SimplifyConfig:
    # onnx-optimizer fusion/elimination passes on top of constant folding. Off by default:
    # onnxsim 0.8.1 rewrites every float MatMul+Add as Reshape-Gemm-Reshape whatever
    # skipped_optimizers says, and dynamic int8 quantizes MatMul, not Gemm.
    perform_optimization: bool = False
    # constant folding with onnxruntime (onnxsim's main job)
    skip_constant_folding: bool = False
    # random-input equality checks onnxsim runs itself (0 = none; our parity check runs anyway)
    check_n: int = 0
    # tensors above this are not materialized by folding (onnxsim's default, "1.5GB")
    tensor_size_threshold: str = "1.5GB"

    def __post_init__(self):
        if self.check_n < 0:
            raise OptimizeError(f"simplify.check_n is {self.check_n}", "use 0 (no onnxsim check) or a positive count")


Config = SimplifyConfig


def _onnxsim():
    """Import onnxsim without letting it import torch.

    onnxsim 0.8.1's __init__ probes an optional PPQ integration with `import torch`
    (onnxsim/ppq_integration.py, inside try/except). `optimize run` must not load
    torch, so a missing torch is simulated for that one import and then forgotten.
    """
    if "onnxsim" in sys.modules or "torch" in sys.modules:
        import onnxsim

        return onnxsim
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import onnxsim
    finally:
        del sys.modules["torch"]
    return onnxsim


def _simplify_graph(cfg: SimplifyConfig):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        onnxsim = _onnxsim()
        try:
            model, ok = onnxsim.simplify(
                str(src),
                check_n=cfg.check_n,
                perform_optimization=cfg.perform_optimization,
                skip_constant_folding=cfg.skip_constant_folding,
                tensor_size_threshold=cfg.tensor_size_threshold,
                # keep inputs backed by an initializer (cross_attn_mask) as inputs:
                # the default folds the all-zero mask away and drops the input
                mutable_initializer=True,
                certify=False,
            )
        except TOOL_ERRORS as e:  # the tool cannot handle this graph (stages.TOOL_ERRORS)
            raise OptimizeError(f"onnxsim failed on the {role}: {str(e).splitlines()[0][:300]}", "skip the simplify stage for this model") from e
        if not ok:
            raise OptimizeError(f"onnxsim's own check failed on the {role}", "set simplify.check_n: 0 or skip the simplify stage")
        graph.save(model, out)
        return []

    return transform


def run(src: Path, dst: Path, cfg: SimplifyConfig) -> StageOutput:
    """Simplify encoder and decoder of `src` into `dst`."""
    before, after, notes = transform_pair(src, dst, "simplify", _simplify_graph(cfg))
    removed = {role: sum(before[role].values()) - sum(after[role].values()) for role in before}
    return StageOutput(before, after, notes, {"nodes_removed": removed})
