"""Does any 4-bit MatMulNBits setting read the AED-L decoder's weights faster than int8 on this CPU?

    python benchmarks/gemv_int4.py --threads 2 --json work/gemv_int4.json

One op type per graph: --copies independent MatMuls of one AED-L decoder weight shape
(1280x1280 attention projections, 1280x5120 / 5120x1280 FFN, 1280x7832 output projection),
each with its own random N(0, 0.03) weight and its own input (the same M rows of N(0, 1);
1 = a greedy step, 3 = beam 3), so that one session run reads copies x the weight bytes as
a decoder step reads its 16 layers (out of cache, not one hot block again) and each int8
MatMul quantizes its own input as in the decoder. Variants, all from the same fp32 weights:
  fp32             MatMul
  dyn-int8         quantize_dynamic, QInt8 per-channel weights (the int8 stage): ORT runs
                   DynamicQuantizeMatMul (fused at load)
  matmulinteger    the same file with ORT's graph optimizations off: DynamicQuantizeLinear
                   + MatMulInteger + the scale Mul, unfused
  nbits8-b32-a4    MatMulNBits 8-bit, symmetric, block 32, accuracy_level 4
  nbits4-bB-aA     MatMulNBits 4-bit, symmetric, block B in --blocks, accuracy_level A in
                   --levels (0 = unset, 1 = fp32 compute, 4 = int8 compute)
The op types each session actually runs are read from its optimized graph. Timing: all of
one shape's sessions are loaded, then --rounds rounds each run every variant once (so load
drift hits all alike); ms per GEMV = median run / copies. Error: relative (Frobenius) error
of each variant's outputs against fp32's on the same x.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

SHAPES = ((1280, 1280), (1280, 5120), (5120, 1280), (1280, 7832))  # (K, N): x (M, K) @ W (K, N)


def graph_of(k: int, n: int, copies: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) * 0.03).astype(np.float32), f"w{i}") for i in range(copies)]
    nodes = [helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"], name=f"/l{i}/MatMul") for i in range(copies)]
    ins = [helper.make_tensor_value_info(f"x{i}", onnx.TensorProto.FLOAT, ["M", k]) for i in range(copies)]
    outs = [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, ["M", n]) for i in range(copies)]
    g = helper.make_graph(nodes, "gemv", ins, outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def variants(k: int, n: int, copies: int, blocks: list[int], levels: list[int], work: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (model path, graph optimizations on)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from optimize.stages import nbits

    fp32 = work / f"fp32_{k}x{n}.onnx"
    onnx.save(graph_of(k, n, copies), fp32)
    dyn = work / f"dyn_{k}x{n}.onnx"
    quantize_dynamic(fp32, dyn, weight_type=QuantType.QInt8, per_channel=True)
    out = {"fp32": (fp32, True), "dyn-int8": (dyn, True), "matmulinteger": (dyn, False)}
    algo_class, quantizer_class = nbits.quantizer()
    for bits, block, level in [(8, 32, 4)] + [(4, b, a) for b in blocks for a in levels]:
        kwargs = dict(block_size=block, is_symmetric=True, accuracy_level=level, bits=bits)
        q = quantizer_class(onnx.load(fp32), algo_config=algo_class(**kwargs), **kwargs)
        q.process()
        path = work / f"nbits{bits}_b{block}_a{level}_{k}x{n}.onnx"
        onnx.save(q.model.model, path)
        out[f"nbits{bits}-b{block}-a{level}"] = (path, True)
    return out


def session(path: Path, optimized: bool, threads: int, spinning: bool, work: Path) -> tuple[ort.InferenceSession, list[str]]:
    """The session and the op types it runs (its optimized graph)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    seen = work / f"seen_{path.stem}_{int(optimized)}.onnx"
    so.optimized_model_filepath = str(seen)
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = sorted({node.op_type for node in onnx.load(seen, load_external_data=False).graph.node})
    return s, ops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--spinning", action="store_true", help="ORT intra-op spinning on (its default; off degrades less when other work shares the cores)")
    p.add_argument("--copies", type=int, default=16, help="independent MatMuls per graph (a decoder has 16 layers)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 3], help="M values (1 = greedy step, 3 = beam 3)")
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 4])
    p.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in SHAPES], help="KxN weight shapes")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds (each runs every variant once), after 3 warm-up rounds")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log every node
    from optimize.host import cpu_summary

    report = {"onnxruntime": ort.__version__, "cpu": cpu_summary(), "threads": args.threads, "spinning": args.spinning, "copies": args.copies,
              "load_avg_1min": [os.getloadavg()[0]], "results": []}  # fmt: skip
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, spinning {'on' if args.spinning else 'off'}, {args.copies} copies per graph; "
          f"1-min load average {report['load_avg_1min'][0]:.2f}; CPU: {report['cpu']}")  # fmt: skip
    print("| shape KxN | M | variant | ORT ops | ms per GEMV | dyn-int8 / this | rel. error vs fp32 |\n|---|---|---|---|---:|---:|---:|")
    for shape in args.shapes:
        k, n = (int(v) for v in shape.lower().split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            sessions = {name: session(path, opt, args.threads, args.spinning, work) for name, (path, opt) in variants(k, n, args.copies, args.blocks, args.levels, work).items()}
            for m in args.rows:
                x0 = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
                x = {f"x{i}": x0 for i in range(args.copies)}
                ref = np.concatenate(sessions["fp32"][0].run(None, x))
                errors = {name: float(np.linalg.norm(np.concatenate(s.run(None, x)) - ref) / np.linalg.norm(ref)) for name, (s, _) in sessions.items()}
                spent: dict[str, list[float]] = {name: [] for name in sessions}
                for r in range(3 + args.rounds):
                    for name, (s, _) in sessions.items():
                        start = time.perf_counter()
                        s.run(None, x)
                        if r >= 3:
                            spent[name].append(time.perf_counter() - start)
                ms = {name: 1e3 * statistics.median(v) / args.copies for name, v in spent.items()}
                for name, (_, ops) in sessions.items():
                    row = {"shape": shape, "M": m, "variant": name, "ops": ops, "ms_per_gemv": ms[name], "vs_dyn_int8": ms["dyn-int8"] / ms[name],
                           "rel_error": errors[name], "runs_ms": [1e3 * v for v in spent[name]]}  # fmt: skip
                    report["results"].append(row)
                    print(f"| {shape} | {m} | {name} | {' '.join(o for o in ops if o not in ('Identity',))} | {ms[name]:.4f} | {row['vs_dyn_int8']:.2f} | {errors[name]:.4f} |", flush=True)
            del sessions
    report["load_avg_1min"].append(os.getloadavg()[0])
    print(f"1-min load average at the end: {report['load_avg_1min'][1]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
