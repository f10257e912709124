"""fuse: onnxruntime.transformers graph fusions, then our own FireRedASR passes.

What fires on a FireRedASR export (shared/reference/ort-toolchain.md E1, E2): only
LayerNormalization / SkipLayerNormalization / Gelu, no Attention or MultiHeadAttention
(the rel-pos MHSA matches none of ORT's patterns). With ORT's symbolic shape inference
on, the optimizer deleted the rel-shift Reshapes and produced an encoder that fails at
run time, so `enable_shape_inference` defaults to False and every stage is parity-checked.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from optimize import contract, graph
from optimize.contract import FUSED_OPS
from optimize.errors import OptimizeError
from optimize.stages import TOOL_ERRORS, StageOutput, transform_pair

# Our own fusions, run in this order after ORT's, on the ModelProto ORT produced. A pass
# takes (model, role "encoder" | "decoder"), rewrites the model in place, and returns a
# JSON-able report with at least {"fused": <patterns rewritten>}; it must keep graph I/O
# and metadata (transform_pair verifies both). The FireRedASR attention fusion
# (optimize/fusion: rel-pos MHA with the q+u bias, scale*bd bias, key-padding mask) plugs
# in as  FIRERED_FUSIONS["attention"] = lambda m, role: fuse_attention(m, role).to_json()
FusionPass = Callable[[onnx.ModelProto, str], dict]
FIRERED_FUSIONS: dict[str, FusionPass] = {
    "attention": lambda model, role: _fuse_attention(model, role).to_json(),
}


def _fuse_attention(model: onnx.ModelProto, role: str):
    from optimize.fusion import fuse_attention  # lazy: the fusion package is only needed here

    return fuse_attention(model, role)

@dataclass(frozen=True)
class FuseConfig:
    # ORT fusion pattern set; "conformer" and "bert" fuse the same LN/SkipLN/Gelu here (E1)
    model_type: str = "bert"
    # 0 = Python fusions only, and the session applies ORT_ENABLE_ALL for the target EP at
    # load; higher levels run ORT's optimizer in Python and bake EP-specific ops
    opt_level: int = 0
    # ORT symbolic shape inference deletes the rel-shift Reshapes (E2: broken encoder)
    enable_shape_inference: bool = False
    # FusionOptions switches to turn off, by name without `enable_` (e.g. "skip_layer_norm")
    disable: tuple[str, ...] = ()
    # our passes from FIRERED_FUSIONS to run after ORT's, in order
    firered_fusions: tuple[str, ...] = ()
    # graphs our passes rewrite: a target where a fused graph is slower keeps that graph unfused
    firered_graphs: tuple[str, ...] = ("encoder", "decoder")

    def __post_init__(self):
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import MODEL_TYPES

        if self.model_type not in MODEL_TYPES:
            raise OptimizeError(f"fuse.model_type {self.model_type!r} is not an onnxruntime.transformers model type", f"use one of {', '.join(MODEL_TYPES)}")
        if self.opt_level not in (0, 1, 2, 99):
            raise OptimizeError(f"fuse.opt_level is {self.opt_level}", "use 0 (recommended), 1, 2 or 99")
        switches = [k[len("enable_"):] for k in vars(FusionOptions(self.model_type)) if k.startswith("enable_")]
        for name in self.disable:
            if name not in switches or name == "shape_inference":
                near = difflib.get_close_matches(name, switches, n=1)
                raise OptimizeError(f"fuse.disable names unknown fusion {name!r}", f"did you mean {near[0]!r}?" if near else f"use some of {', '.join(switches)}")
        from optimize.stages import GRAPHS

        for role in self.firered_graphs:
            if role not in GRAPHS:
                raise OptimizeError(f"fuse.firered_graphs names unknown graph {role!r}", f"use some of {', '.join(GRAPHS)}")
        for name in self.firered_fusions:
            if name not in FIRERED_FUSIONS:
                have = ", ".join(FIRERED_FUSIONS) or "none registered yet"
                raise OptimizeError(f"fuse.firered_fusions names unknown pass {name!r}", f"registered passes: {have}")


Config = FuseConfig


def _fusion_options(cfg: FuseConfig):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(cfg.model_type)
    options.enable_shape_inference = cfg.enable_shape_inference
    for name in cfg.disable:
        setattr(options, f"enable_{name}", False)
    return options


def _dims(src_dir: Path) -> tuple[int, int]:
    """(num_heads, hidden_size) from the encoder metadata, for ORT's attention fusions."""
    meta = dict(graph.metadata(graph.load(src_dir / contract.ENCODER_FILE, load_external=False)))
    fields = contract.parse_metadata(meta, str(src_dir / contract.ENCODER_FILE))
    return int(fields["num_head"]), int(fields["num_head"]) * int(fields["head_dim"])


def _fuse_graph(cfg: FuseConfig, num_heads: int, hidden_size: int, record: dict):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        from onnxruntime.transformers.optimizer import optimize_model

        try:
            model = optimize_model(
                str(src),
                model_type=cfg.model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=_fusion_options(cfg),
                opt_level=cfg.opt_level,
                use_gpu=False,
            )
        except TOOL_ERRORS as e:  # the tool cannot handle this graph (stages.TOOL_ERRORS)
            raise OptimizeError(f"onnxruntime.transformers failed on the {role}: {str(e).splitlines()[0][:300]}", "disable the failing fusion with fuse.disable, or skip the fuse stage") from e
        passes = cfg.firered_fusions if role in cfg.firered_graphs else ()
        record[role] = {name: FIRERED_FUSIONS[name](model.model, role) for name in passes}
        # ORT's save adds the com.microsoft opset import its fused ops need; external data by size
        model.save_model_to_file(str(out), use_external_data_format=graph.needs_external_data(model.model))
        return []

    return transform


def _fused(ops: dict[str, int]) -> dict[str, int]:
    return {op: n for op, n in ops.items() if op in FUSED_OPS}


def run(src: Path, dst: Path, cfg: FuseConfig) -> StageOutput:
    """Fuse encoder and decoder of `src` into `dst`."""
    firered: dict[str, dict[str, int]] = {}
    transform = _fuse_graph(cfg, *_dims(Path(src)), firered)
    before, after, _ = transform_pair(src, dst, "fuse", transform)
    gained = {role: {op: n - _fused(before[role]).get(op, 0) for op, n in _fused(after[role]).items() if n > _fused(before[role]).get(op, 0)} for role in after}
    notes = []
    if not any(gained.values()):
        notes.append("onnxruntime.transformers fused nothing")
    if not cfg.firered_fusions:
        notes.append("no FireRedASR fusion passes ran (none configured)")
    elif not any(r["fused"] for passes in firered.values() for r in passes.values()):
        notes.append(f"FireRedASR passes {', '.join(cfg.firered_fusions)} matched nothing")
    return StageOutput(before, after, tuple(notes), {"fused_ops": gained, "firered_fusions": firered})
