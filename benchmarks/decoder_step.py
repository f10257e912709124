"""Decoder step cost of one pair under our runtime's set-ups: beams, batch, threads, spinning, cross K/V layout.

    python benchmarks/decoder_step.py runs/cpu_int8_aed_l/final --rows 1x1 1x3 16x1 4x3 --steps 32
    python benchmarks/decoder_step.py work/aed_l/int8 --setups ours stacked --profile ours

What a step costs, and why, as the search sees it: the runtime's numpy path (OrtPair +
OrtInference) driven by the runtime's own greedy or beam search (runtime/search.py: argmax
or top-k, beam reorders of the self-caches) for exactly --steps steps (the AED-L checkpoints of
make_aed_l.py never emit eos), on cross K/V of the shape a --frames input gives (random values:
the step's cost does not depend on them). No encoder run is timed. Rows "UxB" = U utterances
x beam B; ms/step is per decoder step of all U x B rows, ms/row-step per row.

Set-ups (each loaded, timed and freed in turn, --passes times, medians reported):
  ours       our runtime's defaults (ProviderOptions()): the decoder rewritten in memory
             (runtime/decoder_graph.py), intra-op spinning "auto" (decided from the host's load)
  stacked    rewrite_decoder off: the graph as published (cross K/V Split per step and
             repeated per beam, whole caches returned): what sherpa-onnx runs
  spinning   ours with ORT's intra-op spinning on
  no-spinning  ours with it off
  1-thread   ours with one intra-op thread (no pool to wake between ops)
--profile SETUP adds an ORT per-op profile (kernel ms per step by op type) of that set-up at
each --rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from optimize.evaluate.bench import profile_by_op
from optimize.runtime.inference import OrtInference
from optimize.runtime.providers import ProviderOptions
from optimize.runtime.search import DecodeConfig, search_scored
from optimize.runtime.session import OrtPair

SETUPS = {
    "ours": lambda threads: (threads, ProviderOptions()),
    "stacked": lambda threads: (threads, ProviderOptions(rewrite_decoder=False)),
    "spinning": lambda threads: (threads, ProviderOptions(intra_op_spinning=True)),
    "no-spinning": lambda threads: (threads, ProviderOptions(intra_op_spinning=False)),
    "1-thread": lambda threads: (1, ProviderOptions()),
}


def parse_rows(text: str) -> tuple[int, int]:
    utterances, beam = (int(v) for v in text.lower().split("x"))
    return utterances, beam


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pair", type=Path, help="model directory (encoder + decoder + tokens.txt)")
    p.add_argument("--setups", nargs="+", choices=tuple(SETUPS), default=list(SETUPS))
    p.add_argument("--rows", type=parse_rows, nargs="+", default=[(1, 1), (1, 3), (16, 1)], help="UxB: utterances x beam")
    p.add_argument("--steps", type=int, default=32, help="decoder steps per search")
    p.add_argument("--frames", type=int, default=1000, help="input fbank frames the cross K/V stand for (1000 = 10 s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed searches per set-up, rows and pass")
    p.add_argument("--passes", type=int, default=2, help="passes through all set-ups (load, time, free)")
    p.add_argument("--profile", choices=tuple(SETUPS), default=None, help="also profile this set-up by op type")
    p.add_argument("--parity", type=parse_rows, default=None, help="UxB: first check the rewritten decoder's logits against the published one's at these rows")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def encoder_frames(frames: int) -> int:
    """T' of the conv2d subsampling (two 3x3 stride-2 convolutions, no padding): 1000 -> 249."""
    return ((frames - 1) // 2 - 1) // 2


def cross_kv(pair: OrtPair, utterances: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Random cross K/V, each shape = (L, U, T', D), float32."""
    i = pair.info
    shape = (i.num_decoder_layers, utterances, encoder_frames(frames), i.num_head * i.head_dim)
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)


def search_seconds(pair: OrtPair, utterances: int, beam: int, steps: int, frames: int, repeats: int) -> list[float]:
    """Wall seconds of `repeats` searches (after one untimed) of U x B rows for `steps` steps."""
    cross_k, cross_v = cross_kv(pair, utterances, frames)
    mask = np.zeros((utterances, 1, 1, cross_k.shape[2]), dtype=np.float32) if utterances > 1 else None
    cfg = DecodeConfig(beam_size=beam, batch_size=utterances, max_len=steps)
    spent = []
    for run in range(repeats + 1):
        model = OrtInference(pair, cross_k, cross_v, mask, steps + 1)
        start = time.perf_counter()
        hyps = search_scored(model, utterances, steps, cfg, pair.info.sos, pair.info.eos)
        if run:
            spent.append(time.perf_counter() - start)
        assert all(len(h.tokens) == steps for h in hyps), f"decoded {[len(h.tokens) for h in hyps]} tokens, want {steps} (eos came)"
    return spent


def rewrite_parity(pair_dir: Path, rows: tuple[int, int], steps: int, frames: int) -> dict:
    """Logits of the rewritten decoder vs the published one: `steps` forced steps of U x B rows with a
    beam reorder after each (the numeric check of runtime/decoder_graph.py at this pair's size)."""
    pairs = [OrtPair(pair_dir, "cpu", 2, ProviderOptions(rewrite_decoder=r, intra_op_spinning=False)) for r in (True, False)]
    cross_k, cross_v = cross_kv(pairs[0], rows[0], frames)
    mask = np.zeros((rows[0], 1, 1, cross_k.shape[2]), dtype=np.float32) if rows[0] > 1 else None
    worst, scale = 0.0, 0.0
    models = [OrtInference(p, cross_k, cross_v, mask, steps + 1) for p in pairs]
    for m in models:
        m.start(rows[1])
    n = rows[0] * rows[1]
    tokens = np.full(n, pairs[0].info.sos, dtype=np.int64)
    for t in range(steps):
        ours, published = (m.step(tokens, t) for m in models)
        worst, scale = max(worst, float(np.abs(ours - published).max())), max(scale, float(np.abs(published).max()))
        tokens = np.argmax(published, axis=1).astype(np.int64)
        for m in models:
            m.reorder(np.roll(np.arange(n), 1))
    return {"rows": f"{rows[0]}x{rows[1]}", "steps": steps, "max_abs_diff": worst, "max_abs_logit": scale, "layout": str(pairs[0].layout)}


def profile(pair_dir: Path, threads: int, options: ProviderOptions, rows: tuple[int, int], args, out: Path) -> dict:
    """Kernel ms per step by op type (ORT profiler) of one search at `rows`, after an unprofiled warm-up."""
    pair = OrtPair(pair_dir, "cpu", threads, options, profile=out / f"profile_{rows[0]}x{rows[1]}")
    search_seconds(pair, *rows, args.steps, args.frames, 1)
    trace = Path(pair.decoder.end_profiling())
    pair.encoder.end_profiling()
    summary = profile_by_op(trace, args.steps)  # the untimed search's steps are the warm-up
    return {"model_run_ms": summary["model_run_ms"], "kernel_ms": summary["ms_per_call"],
            "by_op": {row["op"]: row["ms_per_call"] for row in summary["by_op"]}}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from optimize.host import cpu_summary

    parity = rewrite_parity(args.pair, args.parity, 8, args.frames) if args.parity else None
    if parity:
        print(f"rewritten vs published decoder, {parity['rows']} rows, 8 steps with reorders: max |logit diff| "
              f"{parity['max_abs_diff']:.3g} (max |logit| {parity['max_abs_logit']:.3g}); {parity['layout']}", flush=True)  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {s: {f"{u}x{b}": [] for u, b in args.rows} for s in args.setups}
    loads: dict[str, list[float]] = {s: [] for s in args.setups}
    decided: dict[str, str] = {}
    for _ in range(args.passes):
        for name in args.setups:
            threads, options = SETUPS[name](args.threads)
            start = time.perf_counter()
            pair = OrtPair(args.pair, "cpu", threads, options)
            loads[name].append(time.perf_counter() - start)
            decided[name] = pair.spinning
            for u, b in args.rows:
                times[name][f"{u}x{b}"] += search_seconds(pair, u, b, args.steps, args.frames, args.repeats)
            del pair
            gc.collect()
    print(f"{args.pair}: {args.steps} steps, cross K/V of {args.frames} frames, {args.threads} threads, "
          f"median of {args.passes} x {args.repeats}; CPU: {cpu_summary()}")  # fmt: skip
    cols = [f"{u}x{b}" for u, b in args.rows]
    print("\n| set-up | load s | " + " | ".join(f"{c} ms/step (ms/row-step)" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_summary(), "parity": parity, "setups": {}}
    for name in args.setups:
        ms = {c: 1e3 * statistics.median(times[name][c]) / args.steps for c in cols}
        rows = dict(zip(cols, args.rows))
        cells = [f"{ms[c]:.2f} ({ms[c] / (rows[c][0] * rows[c][1]):.2f})" for c in cols]
        print(f"| {name} | {statistics.median(loads[name]):.1f} | " + " | ".join(cells) + " |")
        result["setups"][name] = {"ms_per_step": ms, "runs_s": times[name], "load_s": loads[name], "spinning": decided[name]}
    print("spinning: " + "; ".join(f"{name} {decided[name]}" for name in args.setups))
    if "1x1" in cols:
        for name in args.setups:
            ms = result["setups"][name]["ms_per_step"]
            ratios = {c: ms[c] / ms["1x1"] for c in cols if c != "1x1"}
            result["setups"][name]["vs_1x1"] = ratios
            print(f"{name}: step cost vs 1x1: " + ", ".join(f"{c} {r:.2f}x" for c, r in ratios.items()))
    if args.profile:
        threads, options = SETUPS[args.profile](args.threads)
        out = (args.json or Path("decoder_step.json")).parent / "decoder_step_profiles"
        out.mkdir(parents=True, exist_ok=True)
        for u, b in args.rows:
            p = profile(args.pair, threads, options, (u, b), args, out)
            result[f"profile {args.profile} {u}x{b}"] = p
            top = ", ".join(f"{op} {v:.2f}" for op, v in list(p["by_op"].items())[:8])
            print(f"profile {args.profile} {u}x{b}: model_run {p['model_run_ms']:.2f} ms, kernels {p['kernel_ms']:.2f} ms/step: {top}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
