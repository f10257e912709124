"""Encoder time of one pair under different ONNX Runtime session set-ups, interleaved in one process.

    python benchmarks/session_options.py work/aed_l/int8
    PYTHONPATH=/path/to/onnxruntime-1.28 python benchmarks/session_options.py work/aed_l/int8

Why: sherpa-onnx (bundling its own onnxruntime) ran our int8 encoder faster than our runtime
on a CPU with AVX-512 VNNI. The candidates are the session options (threads, inter-op
threads, spinning, optimization level, how the model is handed over) and the onnxruntime
build itself; this script times each set-up in blocks (an untimed run, then --runs timed
ones), over --passes passes through all set-ups, so that a drift in load from other
processes falls on all alike while a spinning pool of the previous set-up only touches the
untimed run; it prints medians and their ratio to our runtime's set-up. Run it once per onnxruntime version to separate the two causes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from optimize import contract


# our runtime's set-up (runtime/providers.py: ProviderOptions.intra_op_spinning defaults to off)
OURS = "ours (ENABLE_ALL, intra N, no intra-op spinning)"


def setups(threads: int) -> dict[str, dict]:
    """name -> (session options to set, config entries, model handed over as bytes)."""
    base = {"intra_op_num_threads": threads, "log_severity_level": 3}
    return {
        "ORT defaults (ENABLE_ALL, intra N, spinning)": {"opts": base},
        "sherpa-onnx (intra N, inter N, spinning)": {"opts": base | {"inter_op_num_threads": threads}},
        OURS: {"opts": base, "config": {"session.intra_op.allow_spinning": "0"}},
        "ENABLE_EXTENDED": {"opts": base | {"graph_optimization_level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}},
        "denormals as zero": {"opts": base, "config": {"session.set_denormal_as_zero": "1"}},
        "from bytes (as sherpa-onnx)": {"opts": base, "bytes": True},
    }


def session(path: Path, setup: dict) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for k, v in setup["opts"].items():
        setattr(so, k, v)
    for k, v in setup.get("config", {}).items():
        so.add_session_config_entry(k, v)
    source = path.read_bytes() if setup.get("bytes") else str(path)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pair", type=Path, help="model directory (encoder.onnx without external data)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=1000, help="fbank frames (1000 = 10 s)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per set-up and pass")
    p.add_argument("--passes", type=int, default=2, help="passes through all set-ups")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((1, args.frames, 80)).astype(np.float32)
    feed = dict(zip([n for n, _ in contract.ENCODER_INPUTS], [x, np.array([args.frames], dtype=np.int64)]))
    sessions = {name: session(args.pair / contract.ENCODER_FILE, s) for name, s in setups(args.threads).items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.passes):
        for name, s in sessions.items():
            s.run(None, feed)  # untimed: the previous set-up's pool may still spin
            for _ in range(args.runs):
                start = time.perf_counter()
                s.run(None, feed)
                times[name].append(time.perf_counter() - start)
    ours = statistics.median(times[OURS])
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, {args.frames} frames, median of {args.passes} x {args.runs} runs")
    print("| set-up | encoder ms | vs ours |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * statistics.median(t):.1f} | {ours / statistics.median(t):.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"onnxruntime": ort.__version__, "runs_s": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
