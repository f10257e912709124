"""Encoder and decoder-step latency before and after attention fusion, fp32 and int8, side by side.

    python benchmarks/fusion_latency.py                                  # tiny dims (the test fixture's)
    python benchmarks/fusion_latency.py --d-model 1280 --heads 20 --enc-layers 2 --dec-layers 2 --vocab 7832

The second line is FireRedASR-AED-L's width with 2 of its 16 layers per stack, a cheap
per-layer estimate (the full model is a 4.5 GB random checkpoint and minutes of export).
A random checkpoint of the given dims is exported once into --work-dir (reused if present),
then each graph is timed unfused and fused, in fp32 and in int8 (quantize_dynamic,
MatMul only, per-tensor, applied to the unfused and to the fused graph). Unfused and fused
runs alternate within one loop so that load from other processes hits both alike.
Reported: median and fastest milliseconds per call, and the fused output's max error
relative to the unfused output's largest magnitude (same precision), as one markdown table.
On a machine other processes load, wall time mostly measures waiting for a core:
`--clock cpu` (CPU time of the session's threads, spinning off) is the steadier number.
A --work-dir is reused as it is: use a fresh one when the dims change.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from optimize import graph
from optimize.contract import CROSS_MASK, DECODER_FILE, ENCODER_FILE, GRAPHS
from optimize.fusion import fuse_attention
from aed_dims import add_dim_args, dims_of


@dataclass(frozen=True)
class Row:
    graph: str  # "encoder" or "decoder step"
    precision: str  # "fp32" or "int8"
    unfused_ms: float  # median latency of the exported graph
    fused_ms: float  # median latency after fuse_attention
    unfused_min_ms: float  # fastest call: the least disturbed by other processes on a shared machine
    fused_min_ms: float
    rel_err: float  # max |fused - unfused| / max |unfused| over all outputs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dim_args(p, d_model=64, heads=4, enc_layers=2, dec_layers=2, vocab=60)
    p.add_argument("--fixed-cache-len", type=int, default=None, help="export the v1 layout with this self-cache length (1024)")
    p.add_argument("--frames", type=int, default=1000, help="input fbank frames (10 ms each: 1000 = 10 s)")
    p.add_argument("--batch", type=int, default=1, help="utterances per call (all --frames long)")
    p.add_argument("--offset", type=int, default=32, help="decoder step timed: tokens already in the cache")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per model (the median is reported)")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time; cpu: CPU time of all threads, spinning off (steadier when other processes load the machine)",
    )  # fmt: skip
    p.add_argument("--no-int8", action="store_true", help="time fp32 only")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the export and models here (default: a temp dir)")
    return p.parse_args()


def export_pair(args: argparse.Namespace, work: Path) -> Path:
    """A random checkpoint of the requested dims, exported to work/pair (reused when already there)."""
    pair = work / "pair"
    if (pair / ENCODER_FILE).is_file() and (pair / DECODER_FILE).is_file():
        return pair
    from optimize.export.checkpoint import make_random_checkpoint
    from optimize.export.exporter import ExportConfig, export_checkpoint

    ckpt = make_random_checkpoint(work / "ckpt", **dims_of(args))
    export_checkpoint(ckpt, pair, ExportConfig(fixed_cache_len=args.fixed_cache_len))
    return pair


def build_variants(pair: Path, work: Path, int8: bool) -> dict[tuple[str, str, str], Path]:
    """(graph, precision, "unfused"|"fused") -> model path."""
    out = {}
    for role, fname in GRAPHS.items():
        out[role, "fp32", "unfused"] = pair / fname
        fused = work / "fp32-fused" / fname
        if not fused.is_file():
            model = graph.load(pair / fname)
            report = fuse_attention(model, role)
            nodes = f"-{report.nodes_removed}/+{report.nodes_added} nodes"
            print(f"{role}: fused {report.fused} of {report.candidates} attentions {report.by_role}, {nodes}")
            graph.save(model, fused)
        out[role, "fp32", "fused"] = fused
        if int8:
            for variant in ("unfused", "fused"):
                out[role, "int8", variant] = _quantize(out[role, "fp32", variant], work / f"int8-{variant}" / fname)
    return out


def _quantize(src: Path, dst: Path) -> Path:
    """Dynamic int8 as the pipeline does it: MatMul only, per-tensor, QInt8 weights."""
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(
            str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=False, weight_type=QuantType.QInt8,
            use_external_data_format=graph.needs_external_data(graph.load(src, load_external=False)) or bool(graph.external_files(src)),
            # the fused graph has com.microsoft outputs onnx shape inference cannot type
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )  # fmt: skip
    return dst


def session(path: Path, threads: int, spin: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    if not spin:  # idle pool threads would otherwise burn CPU time while they wait for work
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(args: argparse.Namespace, pair: Path) -> dict[str, dict[str, np.ndarray]]:
    """Encoder input x (N, frames, 80) and a decoder step at `offset` with its cross K/V from the encoder."""
    rng = np.random.default_rng(0)
    enc = session(pair / ENCODER_FILE, args.threads)
    idim = enc.get_inputs()[0].shape[2]
    x = rng.standard_normal((args.batch, args.frames, idim)).astype(np.float32)
    enc_feed = {"x": x, "x_len": np.full(args.batch, args.frames, np.int64)}
    cross_k, cross_v = enc.run(None, enc_feed)
    dec = session(pair / DECODER_FILE, args.threads)
    layers, n, t_enc, _ = cross_k.shape
    _, _, s, h, dh = (d if isinstance(d, int) else None for d in dec.get_inputs()[1].shape)
    s = s or t_enc + 1  # the recognizer's dynamic cache: one slot per possible step
    offset = min(args.offset, s - 1)
    cache = np.zeros((layers, n, s, h, dh), np.float32)
    cache[:, :, :offset] = rng.standard_normal((layers, n, offset, h, dh))
    dec_feed = {
        "tokens": rng.integers(5, args.vocab, (n, 1)).astype(np.int64),
        "in_n_layer_self_k_cache": cache,
        "in_n_layer_self_v_cache": cache.copy(),
        "n_layer_cross_k": cross_k,
        "n_layer_cross_v": cross_v,
        "offset": np.array([offset], np.int64),
        CROSS_MASK: np.zeros((n, 1, 1, t_enc), np.float32),
    }
    return {"encoder": enc_feed, "decoder": dec_feed}


def time_pair(paths: tuple[Path, Path], feed: dict, args: argparse.Namespace) -> tuple[list[float], list[float], float]:
    """Per-call ms of (unfused, fused), alternating calls, and the fused output's relative error."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sessions = [session(p, args.threads, spin=args.clock == "wall") for p in paths]
    outs = [s.run(None, feed) for s in sessions]
    for s in sessions:  # warm-up: arena growth and kernel selection happen on the first calls
        for _ in range(2):
            s.run(None, feed)
    times: list[list[float]] = [[], []]
    for r in range(args.repeats):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            start = clock()
            sessions[i].run(None, feed)
            times[i].append((clock() - start) * 1e3)
    err = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for a, b in zip(*outs))
    return times[0], times[1], err


def markdown(rows: list[Row], args: argparse.Namespace, t_enc: int, load: tuple[float, float]) -> str:
    cache = f"fixed {args.fixed_cache_len}" if args.fixed_cache_len else f"dynamic, S = T'+1 = {t_enc + 1}"
    head = [
        f"d_model {args.d_model}, {args.heads} heads, {args.enc_layers} enc + {args.dec_layers} dec layers, vocab {args.vocab}; "
        f"batch {args.batch} x {args.frames} frames (T' = {t_enc}); decoder step at offset {args.offset}, self cache {cache}",
        f"onnxruntime {ort.__version__} CPU, {args.threads} threads, {args.clock} clock, median of {args.repeats}; {platform.machine()}, "
        f"{os.cpu_count()} cores, 1-min load average {load[0]:.1f} before / {load[1]:.1f} after timing",
        "",
        "| graph | precision | unfused ms | fused ms | fused / unfused | unfused min | fused min | min ratio | max rel err |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    body = [
        f"| {r.graph} | {r.precision} | {r.unfused_ms:.2f} | {r.fused_ms:.2f} | {r.fused_ms / r.unfused_ms:.2f} "
        f"| {r.unfused_min_ms:.2f} | {r.fused_min_ms:.2f} | {r.fused_min_ms / r.unfused_min_ms:.2f} | {r.rel_err:.1e} |"
        for r in rows
    ]
    return "\n".join(head + body)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pair = export_pair(args, work)
        paths = build_variants(pair, work, int8=not args.no_int8)
        inputs = feeds(args, pair)
        load_before, rows = os.getloadavg()[0], []
        for precision in ("fp32",) if args.no_int8 else ("fp32", "int8"):
            for role in GRAPHS:
                pair_paths = (paths[role, precision, "unfused"], paths[role, precision, "fused"])
                unfused, fused, err = time_pair(pair_paths, inputs[role], args)
                name = "encoder" if role == "encoder" else "decoder step"
                rows.append(Row(name, precision, statistics.median(unfused), statistics.median(fused), min(unfused), min(fused), err))
        load = (load_before, os.getloadavg()[0])  # other processes on the machine skew every number
        print(markdown(rows, args, inputs["decoder"]["n_layer_cross_k"].shape[2], load))


if __name__ == "__main__":
    main()
