"""reexport: a published sherpa-onnx pair -> the same weights as `optimize export` makes them.

The published graphs (TorchScript exports of the official modules) keep what our
exporter removed: a fixed 1024 self-cache rewritten every step (v1), per-step mask and
slice/scatter machinery, batch 1, conformer 1x1 convolutions as Conv, and attention
shapes the FireRedASR fusion does not match. Rewriting those graphs in place would mean
recognising every variant of that machinery; lifting the weights (they keep their module
paths, optimize/export/lift.py) and re-exporting gives exactly our pair, whose speed and
fusions are proven elsewhere. The stage then proves the new pair computes what the
published one does (cross K/V, teacher-forced logits on synthetic probes) and keeps the
published encoder metadata and tokens.txt byte-for-byte.

Needs torch (the `export` extra); the pipeline puts this stage first when the input pair
was not made by `optimize export` (no overridable cross_attn_mask), see `needed`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from optimize import contract, graph
from optimize.errors import OptimizeError
from optimize.atomic import replace_dir
from optimize.stages import GRAPHS, StageOutput, check_input

TORCH_FIX = "install it with `pip install torch==2.13.0 && pip install -e '.[export]'`, or start from a pair made by `optimize export`"


@dataclass(frozen=True)
class ReexportConfig:
    opset: int = 17  # as `optimize export`: LayerNormalization is one op from 17
    probes: int = 2  # synthetic inputs (150 and 420 frames) of the numerical proof
    probe_steps: int = 8  # teacher-forced decoder steps per probe
    # proof thresholds against the published pair; fp32 input: the weights are bit-exact, so
    # only the order of float operations differs (1x1 Conv vs MatMul, mask arithmetic): measured
    # 4e-7 on random tiny weights, 5.6e-5 on the trained 4-layer default; it grows with depth
    max_cross_kv_rel_error: float = 1e-3  # ||new - published|| / ||published||, cross K and V
    min_logits_cosine: float = 0.99999  # worst teacher-forced step of any probe
    # fp16 input: the published graph computes in fp16, the re-export in fp32 from the same
    # fp16-rounded weights; these bound the published graph's own fp16 rounding
    max_cross_kv_rel_error_fp16: float = 1e-2
    min_logits_cosine_fp16: float = 0.999

    def __post_init__(self):
        if self.opset < 17 or self.probes < 1 or self.probe_steps < 1:
            raise OptimizeError(f"reexport {self} is out of range", "use opset >= 17, probes >= 1, probe_steps >= 1")


Config = ReexportConfig


def needed(model_dir: Path) -> bool:
    """Whether `model_dir` holds a pair not made by `optimize export` (published style): no cross_attn_mask."""
    decoder = graph.load(contract.model_files(model_dir)["decoder"], load_external=False)
    return contract.CROSS_MASK not in {i.name for i in decoder.graph.input}


def quantized(model_dir: Path) -> dict[str, dict[str, int]]:
    """Quantization op counts per graph of `model_dir` (empty when both graphs are float)."""
    out = {}
    for role, f in contract.model_files(model_dir).items():
        q = graph.quantized_ops(graph.load(f, load_external=False))
        if q:
            out[role] = q
    return out


def _is_fp16(model_dir: Path) -> bool:
    model = graph.load(Path(model_dir) / contract.ENCODER_FILE, load_external=False)
    return any(t.data_type == 10 for t in model.graph.initializer)  # FLOAT16


def _lift_module():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise OptimizeError("stage reexport needs torch to re-export the lifted weights, and torch is not installed", TORCH_FIX) from e
    from optimize.export import exporter, lift

    return lift, exporter


def prove(published: Path, pair: Path, cfg: ReexportConfig, fp16: bool) -> dict:
    """Parity of the re-exported `pair` against the `published` one; OptimizeError past the thresholds."""
    from optimize.evaluate import parity
    from optimize.runtime.session import OrtPair

    probes = parity.synthetic_probes(cfg.probes)
    ref = OrtPair(published, "cpu", 1)
    runs = [parity.run_probe(ref, f, cfg.probe_steps, True) for f in probes]
    result, _ = parity.compare(OrtPair(pair, "cpu", 1), probes, runs, cfg.probe_steps, True)
    max_rel = cfg.max_cross_kv_rel_error_fp16 if fp16 else cfg.max_cross_kv_rel_error
    min_cos = cfg.min_logits_cosine_fp16 if fp16 else cfg.min_logits_cosine
    if result.cross_kv_rel_error > max_rel or result.teacher_forced_cosine < min_cos:
        raise OptimizeError(
            f"the re-exported pair differs from {published}: cross K/V relative error {result.cross_kv_rel_error:.2e} "
            f"(max {max_rel:g}), teacher-forced logits cosine {result.teacher_forced_cosine:.6f} (min {min_cos})",
            "the graphs hold weights or computations the official FireRedASR AED model does not; use the official checkpoint",
        )
    return {"cross_kv_rel_error": result.cross_kv_rel_error, "teacher_forced_cosine": result.teacher_forced_cosine,
            "greedy_identical": result.greedy_identical, "fp16_input": fp16, "thresholds": [max_rel, min_cos]}  # fmt: skip


def _restore_published(src: Path, pair: Path) -> None:
    """The published encoder metadata (verbatim, version key included) and tokens.txt."""
    published = graph.metadata(graph.load(src / contract.ENCODER_FILE, load_external=False))
    encoder = graph.load(pair / contract.ENCODER_FILE, load_external=False)  # tensors stay in their .data file
    graph.set_metadata(encoder, published)
    tmp = pair / (contract.ENCODER_FILE + ".tmp")
    import onnx

    onnx.save_model(encoder, str(tmp))
    os.replace(tmp, pair / contract.ENCODER_FILE)
    shutil.copyfile(src / contract.TOKENS_FILE, pair / contract.TOKENS_FILE)


def run(src: Path, dst: Path, cfg: ReexportConfig) -> StageOutput:
    src, dst = Path(src), Path(dst)
    check_input(src)
    lift, exporter = _lift_module()
    fp16 = _is_fp16(src)
    before = {role: graph.op_counts(graph.load(src / f, load_external=False)) for role, f in GRAPHS.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.reexport-") as work:
        ckpt, pair = Path(work) / "checkpoint", Path(work) / "pair"
        lifted = lift.lift(src)
        dims, meta_version = lifted.dims, lifted.metadata.get("version")
        lift.write_checkpoint(lifted, ckpt)
        del lifted
        exporter.export_checkpoint(ckpt, pair, exporter.ExportConfig(opset=cfg.opset))
        shutil.rmtree(ckpt)
        _restore_published(src, pair)
        proof = prove(src, pair, cfg, fp16)
        after = {role: graph.op_counts(graph.load(pair / f, load_external=False)) for role, f in GRAPHS.items()}
        replace_dir(pair, dst)
    notes = (f"lifted {dims.n_layers_enc}+{dims.n_layers_dec} layers, d_model {dims.d_model}, vocab {dims.odim} out of the "
             f"published graphs and re-exported (dynamic cache, batch, cross_attn_mask); metadata version {meta_version} kept",
             f"proof vs the published pair: cross K/V rel error {proof['cross_kv_rel_error']:.2e}, "
             f"teacher-forced logits cosine {proof['teacher_forced_cosine']:.7f}")  # fmt: skip
    return StageOutput(before, after, notes, {"proof": proof, "dims": dims.__dict__})

