"""An AED-L-size random checkpoint, its two exports and their int8 versions, with peak memory per step.

    python benchmarks/make_aed_l.py work/aed_l                       # full AED-L size (1.14 B params)
    python benchmarks/make_aed_l.py work/aed_512 --d-model 512 --heads 8 --enc-layers 2 --dec-layers 2
    python benchmarks/make_aed_l.py work/aed_l2 --release 2 --vocab 8667 --with-ctc   # FireRedASR2-AED size

Writes, under OUT (a step whose output exists is skipped, so an interrupted run resumes):
  ckpt/      model.pth.tar, cmvn.ark, dict.txt in the official format (random weights)
  fp32/      `optimize export`: dynamic self-cache length (ours)
  fp32-v1/   the published v1 layout: self-cache length fixed at 1024
  int8/      fp32/ through quantize_dynamic (MatMul only, per-tensor): the benchmark's int8 pair
  int8-v1/   fp32-v1/ through the same quantization: the v1-layout int8 pair
  int4dec/   int8/'s encoder + fp32/'s decoder through the int4_weight_only stage (symmetric
             4-bit blocks of 32, accuracy_level 4): the int4-decoder variant
  int4ffn/   the same with recipes/cpu_int8_int4dec.yaml's int4_weight_only settings: 4-bit
             FFN weights, the decoder's other MatMuls dynamic int8 (the shipped variant)
  int8-static/  fp32/'s encoder through the int8_static stage (ranges from calibration/calib,
             per-channel) + int8/'s decoder: the static-int8 encoder variant
  make_aed_l.json  dims, parameter count, bytes on disk and peak RSS per step and phase (each
                   step runs in a fresh process), the ratio of each peak over the process
                   baseline to the fp32 weight bytes, and that ratio applied to AED-L's weights
  records/<step>.json  the same per step, kept so that a resumed run still reports skipped steps

Full size needs about 17 GB of disk (checkpoint 4.6 GB, two fp32 pairs 4.6 GB each, two int8
pairs 1.7 GB each).

The decoder's `<eos>` embedding row is zeroed, so the eos logit is exactly 0 while the
other 7831 logits are random: greedy decoding never stops early, and every system of
benchmarks/cpu_benchmark.py, sherpa-onnx included, runs the same number of steps.
The int8 recipe is the one the published v1 int8 files used (sherpa export scripts):
quantize_dynamic, op_types ["MatMul"], per-tensor; reduce_range as chosen here.
"""

from __future__ import annotations

import argparse
import contextlib
import concurrent.futures
import functools
import importlib
import json
import logging
import multiprocessing
import platform
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import onnx

from optimize import contract, graph
from optimize.evaluate.memory import GIB, PeakRss, max_rss_bytes, rss_bytes
from aed_dims import AED_L, add_dim_args, dims_of

STEPS = ("ckpt", "fp32", "fp32-v1", "int8", "int8-v1", "int4dec", "int4ffn", "int8-static")
# FireRedASR-AED-L: encoder 710,543,968 + decoder 429,806,080 parameters (the tied output
# projection counted once); measured on d_model 1280 checkpoints as count(1+1 layers) +
# 15 x (count(2+2) - count(1+1)), and equal to the published 710.5M / 429.8M.
AED_L_PARAMS = 1_140_350_048
V1_CACHE_LEN = 1024  # the published v1 decoder's fixed self-cache length


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output directory")
    add_dim_args(p, **AED_L)
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--release", type=int, choices=(1, 2), default=1, help="checkpoint format: 2 = FireRedASR2-AED (adds the CTC head)")
    p.add_argument("--with-ctc", action="store_true", help="export the CTC head as a third encoder output (release 2)")
    p.add_argument("--weight-type", choices=("QInt8", "QUInt8"), default="QInt8", help="int8 weight type (published v1: QInt8)")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=True, help="7-bit weights (needed without VNNI)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run (default: all)")
    p.add_argument(
        "--scaled-thresholds", action="store_true",
        help="at reduced size, scale the 1.8 GB external-data thresholds by params / AED-L params, so that the "
        "same graphs take the external-data path as in the full-size run (memory measurements)",
    )  # fmt: skip
    return p.parse_args(argv)


def parameter_count(ckpt: Path) -> dict[str, int]:
    """Parameters per part of a checkpoint (the tied projection counted once), read memory-mapped."""
    import torch

    state = torch.load(ckpt / "model.pth.tar", map_location="cpu", mmap=True, weights_only=False)["model_state_dict"]
    count = {"encoder": 0, "decoder": 0}
    for key, value in state.items():
        if key.endswith(".pe") or key == "decoder.tgt_word_prj.weight":
            continue  # positional tables are buffers; the projection is tied to the embedding
        count[key.split(".")[0]] = count.get(key.split(".")[0], 0) + value.numel()
    return {**count, "total": sum(count.values())}  # FireRedASR2 adds "ctc": the CTC head


def make_checkpoint(out: Path, dims: dict, seed: int, release: int = 1) -> None:
    """Random official-format checkpoint whose greedy decode never emits eos (see module doc)."""
    from optimize.export.checkpoint import make_random_checkpoint
    from optimize.export.model import AedDims

    make_random_checkpoint(out, seed=seed, version=release, **dims)
    _zero_eos_row(out / "model.pth.tar", AedDims(**dims).eos_id)


def _zero_eos_row(path: Path, eos: int) -> None:
    """Zero the eos row of the tied embedding in place, memory-mapped (no second copy of the weights)."""
    import torch

    package = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    state = package["model_state_dict"]
    for key in ("decoder.tgt_word_emb.weight", "decoder.tgt_word_prj.weight"):
        state[key] = state[key].clone()  # 40 MB at AED-L: the mmap is read-only
        state[key][eos].zero_()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(package, tmp)
    del package, state
    tmp.replace(path)


@contextmanager
def labelled_phases(mem: PeakRss, prefix: str, targets: list[tuple[object, str, Callable[..., str]]]):
    """While open, calls of `owner.attr` run inside phase `<prefix> <label(*args)>` (restored on exit).

    Only for measuring: it attributes memory to the steps inside export_checkpoint and
    quantize_dynamic without changing them.
    """
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]

    def wrap(fn, label):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            with mem.phase(f"{prefix} {label(*a, **k)}"):
                return fn(*a, **k)

        return wrapper

    for (owner, attr, fn), (_, _, label) in zip(originals, targets):
        setattr(owner, attr, wrap(fn, label))
    try:
        yield
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)


def export(ckpt: Path, out: Path, fixed_cache_len: int | None, mem: PeakRss, with_ctc: bool = False) -> None:
    from optimize.export import exporter

    targets = [
        (exporter, "load_checkpoint", lambda *a, **k: "load_checkpoint"),
        (exporter, "_torch_export", lambda m, args, path, *a, **k: f"torch.onnx.export {Path(path).stem}"),
        (exporter, "_finish_graph", lambda raw, final, *a, **k: f"load+save {Path(final).stem}"),
    ]
    with labelled_phases(mem, out.name, targets):
        exporter.export_checkpoint(ckpt, out, exporter.ExportConfig(fixed_cache_len=fixed_cache_len, with_ctc=with_ctc))


def int8_bytes_estimate(model: onnx.ModelProto) -> int:
    """Initializer bytes after MatMul-only quantization: constant MatMul B operands become 1 byte/element."""
    inits = {t.name: t for t in model.graph.initializer}
    matmul_b = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    total = 0
    for name, t in inits.items():
        n = 1
        for d in t.dims:
            n *= d
        total += n * (1 if name in matmul_b else onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
    return total


def quantize_graph(src: Path, dst: Path, weight_type: str, reduce_range: bool) -> dict:
    """quantize_dynamic one graph by path; external data exactly when the int8 output needs it.

    The encoder metadata is re-attached from `src` (the quantizer adds `onnx.infer`, and
    its external-data path has been reported to drop keys). Returns what was written.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reference = graph.load(src, load_external=False)
    estimate = int8_bytes_estimate(reference)
    external = estimate > graph.PROTO_LIMIT_BYTES
    quantize_dynamic(
        src, dst, op_types_to_quantize=["MatMul"], per_channel=False, reduce_range=reduce_range,
        weight_type=QuantType[weight_type], use_external_data_format=external,
    )  # fmt: skip
    model = graph.load(dst, load_external=False)
    graph.set_metadata(model, graph.metadata(reference))
    onnx.save_model(model, str(dst))  # proto only: external tensors stay where they are
    on_disk = graph.size_bytes(dst)
    if on_disk > 1.25 * estimate + (1 << 20):
        # a stale or appended .data file (onnx appends to existing data files)
        raise SystemExit(f"{dst}: {on_disk} bytes on disk for about {estimate} bytes of tensors")
    return {"external_data": external, "bytes_on_disk": on_disk, "tensor_bytes_estimate": estimate}


def quantize_pair(src: Path, dst: Path, weight_type: str, reduce_range: bool, mem: PeakRss | None = None) -> dict:
    """int8 copy of the pair in `src` at `dst`, published atomically (written to `<dst>.tmp`, renamed)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record = {}
    for fname in (contract.ENCODER_FILE, contract.DECODER_FILE):
        with _quantizer_phases(mem, f"{dst.name} {Path(fname).stem}") if mem else contextlib.nullcontext():
            record[fname] = quantize_graph(src / fname, tmp / fname, weight_type, reduce_range)
    shutil.copyfile(src / contract.TOKENS_FILE, tmp / contract.TOKENS_FILE)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.replace(dst)
    return record


@contextmanager
def _quantizer_phases(mem: PeakRss, prefix: str):
    """Phases for quantize_dynamic's own steps (it loads, copies and reloads the whole model)."""
    from onnxruntime.quantization import onnx_model, onnx_quantizer

    quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the package exports a function of that name
    targets = [
        (quantize, "load_model_with_shape_infer", lambda *a, **k: "load_model_with_shape_infer"),
        (onnx_quantizer, "save_and_reload_model_with_shape_infer", lambda *a, **k: "save_and_reload (copy)"),
        (onnx_quantizer.ONNXQuantizer, "quantize_model", lambda *a, **k: "quantize_model"),
        (onnx_model.ONNXModel, "save_model_to_file", lambda *a, **k: "save_model_to_file"),
    ]
    with mem.phase(f"{prefix} quantize_dynamic"), labelled_phases(mem, prefix, targets):
        yield


CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "calib" / "audio"
# variant -> (stage, the pair whose encoder it starts from, the pair whose decoder it starts from)
VARIANTS = {"int4dec": ("int4_weight_only", "int8", "fp32"), "int4ffn": ("int4_weight_only", "int8", "fp32"),
            "int8-static": ("int8_static", "fp32", "int8")}  # fmt: skip
INT4_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "cpu_int8_int4dec.yaml"


def variant_config(step: str, stage):
    """The stage config of a variant: int4ffn takes the shipped recipe's, the others the stage defaults."""
    if step == "int8-static":
        return stage.Config(calibration=CALIBRATION)
    if step == "int4ffn":
        from optimize.recipe import load_recipe

        return next(s.config for s in load_recipe(INT4_RECIPE).stages if s.name == "int4_weight_only")
    return stage.Config()


def variant_pair(out: Path, step: str, target: Path) -> dict:
    """Run a variant's stage on a pair mixed from two earlier steps; returns the stage's record.

    The stage quantizes one graph and copies the other, so the input pair takes the graph
    to quantize from fp32/ and the other, already int8, from int8/ (copied, not linked:
    the stages refuse hard-linked external data).
    """
    from optimize.stages import load_stage

    name, enc_from, dec_from = VARIANTS[step]
    mixed = out / f"{step}.input"
    shutil.rmtree(mixed, ignore_errors=True)
    mixed.mkdir()
    try:
        for src, fname in ((out / enc_from, contract.ENCODER_FILE), (out / dec_from, contract.DECODER_FILE)):
            for f in graph.files_of(src / fname):
                shutil.copyfile(f, mixed / f.name)
        shutil.copyfile(out / "fp32" / contract.TOKENS_FILE, mixed / contract.TOKENS_FILE)
        stage = load_stage(name)
        result = stage.run(mixed, target, variant_config(step, stage))
    finally:
        shutil.rmtree(mixed, ignore_errors=True)
    return {"stage": name, "notes": list(result.notes), "details": result.details}


def pair_files(pair: Path) -> dict[str, dict]:
    """Bytes on disk per graph (with its external data) and the external-data files it uses."""
    return {
        f: {"bytes": graph.size_bytes(pair / f), "external_data": [p.name for p in graph.external_files(pair / f)]}
        for f in (contract.ENCODER_FILE, contract.DECODER_FILE)
    }


def run_step(args: argparse.Namespace, step: str) -> dict:
    """One step in this process, under a PeakRss; returns its record (meant to run in a fresh child)."""
    import torch  # noqa: F401  (the baseline includes the libraries every step loads)
    import onnxruntime.quantization  # noqa: F401

    import optimize.export.exporter  # noqa: F401

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing on every graph
    out, target = args.out, args.out / step
    record: dict = {"baseline_rss_gib": round(rss_bytes() / GIB, 3)}
    if args.scaled_thresholds and step != "ckpt":
        record["external_data_bytes"] = _scale_thresholds(parameter_count(out / "ckpt")["total"] / AED_L_PARAMS)
    mem = PeakRss()
    with mem, mem.phase(step):
        if step == "ckpt":
            make_checkpoint(target, dims_of(args), args.seed, args.release)
        elif step in ("fp32", "fp32-v1"):
            export(out / "ckpt", target, V1_CACHE_LEN if step == "fp32-v1" else None, mem, args.with_ctc)
        elif step in VARIANTS:
            record["stage"] = variant_pair(out, step, target)
        else:
            src = out / ("fp32-v1" if step == "int8-v1" else "fp32")
            record["graphs"] = quantize_pair(src, target, args.weight_type, args.reduce_range, mem)
    record["phases"] = mem.to_json()
    record["max_rss_gib"] = round(max_rss_bytes() / GIB, 3)  # exact, from the kernel
    record["files"] = pair_files(target) if step != "ckpt" else {"model.pth.tar": {"bytes": (target / "model.pth.tar").stat().st_size}}
    return record


def _scale_thresholds(factor: float) -> int:
    """Scale this process's external-data threshold (the one the exporter and every stage save by) by `factor`."""
    graph.PROTO_LIMIT_BYTES = int(graph.PROTO_LIMIT_BYTES * factor)
    return graph.PROTO_LIMIT_BYTES


def run_steps(args: argparse.Namespace) -> dict:
    """Each step in a fresh process: peaks are then per step, and freed memory really returns."""
    report: dict = {"dims": dims_of(args), "steps": {}}
    records = args.out / "records"
    records.mkdir(parents=True, exist_ok=True)
    spawn = multiprocessing.get_context("spawn")
    for step in args.steps:
        saved = records / f"{step}.json"
        if (args.out / step).exists():
            previous = json.loads(saved.read_text()) if saved.exists() else {}
            report["steps"][step] = previous | {"skipped": "output exists"}
            continue
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            report["steps"][step] = pool.submit(run_step, args, step).result()
        saved.write_text(json.dumps(report["steps"][step], indent=2) + "\n", encoding="utf-8")
    report["parameters"] = params = parameter_count(args.out / "ckpt")
    report["fp32_weight_gib"] = round(params["total"] * 4 / GIB, 3)
    for record in report["steps"].values():
        if "phases" in record:
            record.update(scaled_peaks(record, params["total"]))
    return report


def scaled_peaks(record: dict, params: int) -> dict:
    """Peaks as multiples of the fp32 weights over the process baseline, and that multiple at AED-L.

    The AED-L figure is an upper bound where fixed costs (the 9999 x d positional
    table, the libraries) are a large share of the small model's peak; fit two sizes
    (e.g. 1+1 and 2+2 layers at d_model 1280) for a tighter line.
    """
    base, weights, full = record["baseline_rss_gib"] * GIB, params * 4, AED_L_PARAMS * 4
    ratio = lambda peak_gib: (peak_gib * GIB - base) / weights  # noqa: E731
    return {
        "peak_over_weights": {n: round(ratio(p["peak_gib"]), 3) for n, p in record["phases"].items()},
        "max_rss_over_weights": round(ratio(record["max_rss_gib"]), 3),
        "aed_l_estimate_gib": round((base + ratio(record["max_rss_gib"]) * full) / GIB, 2),
    }


def markdown(report: dict) -> str:
    lines = [
        f"params {report['parameters']['total'] / 1e6:.1f} M (fp32 {report['fp32_weight_gib']:.2f} GiB); one process per step",
        "",
        "| step / phase | seconds | peak RSS GiB | peak anon GiB | (peak - baseline) / fp32 weights | AED-L estimate GiB |",
        "|---|---|---|---|---|---|",
    ]
    for step, record in report["steps"].items():
        if "phases" not in record:
            lines.append(f"| {step} | skipped: {record['skipped']}, no record | | | | |")
            continue
        skipped = " (skipped: earlier run)" if "skipped" in record else ""
        lines.append(
            f"| **{step}**{skipped}: process max, baseline {record['baseline_rss_gib']:.2f} | {record['phases'][step]['seconds']:.1f} "
            f"| {record['max_rss_gib']:.3f} | | {record['max_rss_over_weights']:.2f} | {record['aed_l_estimate_gib']:.1f} |"
        )
        for name, p in record["phases"].items():
            if name != step:
                lines.append(f"| {name} | {p['seconds']:.1f} | {p['peak_gib']:.3f} | {p['peak_anon_gib']:.3f} | {record['peak_over_weights'][name]:.2f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = run_steps(args)
    report["host"] = {"machine": platform.machine(), "python": platform.python_version(), "argv": sys.argv[1:]}
    (args.out / "make_aed_l.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
