"""Side-by-side CPU benchmark: official PyTorch eager vs our ONNX pairs vs sherpa-onnx, one run.

    python benchmarks/make_aed_l.py work/aed_l          # once: checkpoint, exports, int8 pairs
    python benchmarks/cpu_benchmark.py work/aed_l       # --int8 DIR to time a pipeline output instead

ROOT is a make_aed_l.py output (ckpt/, fp32/, int8/, int8-v1/). Systems, timed one after
another (each loaded, timed and freed before the next, so that only one model is in memory):
  official-eager  fireredasr==0.0.2 FireRedAsrAed, torch fp32: `encoder(x, x_len)`, then
                  `decoder.batch_beam_search` at beam 1 (what `transcribe` runs) with
                  decode_max_len = --steps and eos disabled, so it runs exactly --steps steps
  ours-fp32       our runtime (OrtPair + OrtInference) on ROOT/fp32: encoder, then a forced
                  greedy loop of --steps steps (eos masked; self-cache length steps + 1)
  ours-int8       the same on the int8 pair (--int8, default ROOT/int8)
  sherpa-int8     sherpa_onnx.OfflineRecognizer.from_fire_red_asr (greedy) on the same int8 pair
  sherpa-v1-int8  the same on ROOT/int8-v1, the published v1 layout (self-cache fixed at 1024)

Input: --frames fbank frames (1000 = 10 s) of CMVN-normalized random features for the first
three; sherpa-onnx takes a waveform of the same duration (it computes its own fbank: 998
frames for 10 s) and cannot be told a step count, only a cap, `max_token_per_second`
(steps = floor(seconds x cap) when no eos comes, and the benchmark's checkpoints never emit
eos: make_aed_l.py zeroes its embedding row). It is timed whole (create_stream +
accept_waveform + decode_stream) at two caps; the slope gives its decoder ms/step, and the
rest (fbank, encoder, set-up) is its encoder time. All clocks are medians over --repeats
after --warmup untimed runs, with --threads threads. End-to-end = encoder + steps x step,
RTF = end-to-end / audio seconds, for every system alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from optimize import contract
from optimize.evaluate.memory import GIB, PeakRss

SYSTEMS = ("official-eager", "ours-fp32", "ours-int8", "sherpa-int8", "sherpa-v1-int8")
SAMPLE_RATE = 16000
# The targets at full AED-L size: (ratio key, minimum), or ("rtf ...", maximum) for RTFs.
TARGETS = (
    ("e2e speedup int8 vs official eager", 6.0),
    ("e2e speedup int8 vs our fp32", 2.5),
    ("decoder step speedup ours vs v1-layout int8 (sherpa-onnx both)", 3.0),
    ("decoder step speedup ours vs v1-layout int8 (our runtime vs sherpa v1)", 3.0),
)
MAX_RTF = 0.25  # end-to-end RTF target for ours-int8


@dataclass(frozen=True)
class Timing:
    system: str
    runtime: str  # what executes the model
    encoder_ms: float  # median encoder time (sherpa: everything but the decoder steps)
    step_ms: float  # median decoder time per step
    steps: int  # decoder steps in the end-to-end figure
    e2e_s: float  # encoder + steps x step
    rtf: float  # e2e / audio seconds
    load_s: float  # model load (not in e2e)
    peak_rss_gib: float  # peak RSS while loaded and timed
    peak_anon_gib: float  # the same, without file-backed pages
    timed: str  # what the clocks cover
    raw: dict  # per-repeat seconds and any derivation inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="make_aed_l.py output: ckpt/, fp32/, int8/, int8-v1/")
    p.add_argument("--int8", type=Path, default=None, help="int8 pair to time as ours (default ROOT/int8)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="systems to time")
    p.add_argument("--frames", type=int, default=1000, help="input length in 10 ms fbank frames (1000 = 10 s)")
    p.add_argument("--steps", type=int, default=32, help="forced decoder steps (eos ignored)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every system")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (the median is reported)")
    p.add_argument("--profile", choices=("on-miss", "always", "never"), default="on-miss",
                   help="ORT profile of ours-int8 by op type: when a target is missed, always, or never")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="results file (default ROOT/cpu_benchmark.json)")
    return p.parse_args(argv)


def features(frames: int, seed: int = 0) -> np.ndarray:
    """CMVN-normalized-like features: shape = (1, frames, 80), float32, N(0, 1)."""
    return np.random.default_rng(seed).standard_normal((1, frames, 80)).astype(np.float32)


def waveform(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise at speech level: shape = (seconds x 16000,), float32 in [-1, 1]."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)


def timed_median(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    spent = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        spent.append(time.perf_counter() - start)
    return statistics.median(spent), spent


def official_model(ckpt: Path):
    """fireredasr's FireRedAsrAed with the checkpoint's weights, eval mode.

    The checkpoint is memory-mapped, so the process holds one anonymous copy of the
    weights (the model's), not two.
    """
    import torch
    from fireredasr.models.fireredasr_aed import FireRedAsrAed

    package = torch.load(ckpt / "model.pth.tar", map_location="cpu", mmap=True, weights_only=False)
    model = FireRedAsrAed.from_args(package["args"])
    model.load_state_dict(package["model_state_dict"], strict=True)
    del package
    return model.eval()


def time_official(ckpt: Path, x: np.ndarray, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = official_model(ckpt)
    load_s = time.perf_counter() - start
    model.decoder.eos_id = -1  # no token equals -1: batch_beam_search never finishes early
    feats, lengths = torch.from_numpy(x), torch.tensor([x.shape[1]])
    with torch.inference_mode():
        enc_s, enc_runs = timed_median(lambda: model.encoder(feats, lengths), args.warmup, args.repeats)
        enc, _, mask = model.encoder(feats, lengths)

        def decode():
            hyps = model.decoder.batch_beam_search(enc, mask, beam_size=1, nbest=1, decode_max_len=args.steps)
            assert len(hyps[0][0]["yseq"]) == args.steps, f"official decode ran {len(hyps[0][0]['yseq'])} steps, want {args.steps}"

        dec_s, dec_runs = timed_median(decode, args.warmup, args.repeats)
    timed = "encoder(x, x_len); batch_beam_search(beam 1, decode_max_len=steps) / steps"
    return dict(runtime=f"torch {torch.__version__} eager fp32", encoder_s=enc_s, step_s=dec_s / args.steps, load_s=load_s,
                timed=timed, raw={"encoder_runs_s": enc_runs, "decode_runs_s": dec_runs})  # fmt: skip


def forced_greedy(pair, cross_k: np.ndarray, cross_v: np.ndarray, steps: int) -> list[int]:
    """`steps` greedy decoder steps through our runtime's Inference, eos masked out."""
    from optimize.runtime.recognizer import OrtInference

    model = OrtInference(pair, cross_k, cross_v, None, pair.fixed_cache_len or steps + 1)
    model.start(1)
    tokens, out = np.array([pair.info.sos], dtype=np.int64), []
    for t in range(steps):
        logits = model.step(tokens, t)
        logits[:, pair.info.eos] = -np.inf
        tokens = logits.argmax(axis=1).astype(np.int64)
        out.append(int(tokens[0]))
    return out


def time_ours(pair_dir: Path, x: np.ndarray, args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    from optimize.runtime.session import OrtPair

    start = time.perf_counter()
    pair = OrtPair(pair_dir, "cpu", args.threads)
    load_s = time.perf_counter() - start
    x_len = np.array([x.shape[1]], dtype=np.int64)
    enc_s, enc_runs = timed_median(lambda: pair.encode(x, x_len), args.warmup, args.repeats)
    cross_k, cross_v = pair.encode(x, x_len)
    dec_s, dec_runs = timed_median(lambda: forced_greedy(pair, cross_k, cross_v, args.steps), args.warmup, args.repeats)
    timed = f"OrtPair.encode; {args.steps} OrtInference.step calls + argmax / steps (cache length {pair.fixed_cache_len or args.steps + 1})"
    return dict(runtime=f"onnxruntime {ort.__version__} (our runtime)", encoder_s=enc_s, step_s=dec_s / args.steps,
                load_s=load_s, timed=timed, raw={"encoder_runs_s": enc_runs, "decode_runs_s": dec_runs})  # fmt: skip


def sherpa_caps(seconds: float, steps: int) -> tuple[int, ...]:
    """max_token_per_second caps for the fit: 1/s, 2/s and one giving at least `steps` steps."""
    return (1, 2, max(3, math.ceil(steps / seconds)))


def time_sherpa(pair_dir: Path, seconds: float, args: argparse.Namespace) -> dict:
    import sherpa_onnx

    start = time.perf_counter()
    rec = sherpa_onnx.OfflineRecognizer.from_fire_red_asr(
        encoder=str(pair_dir / contract.ENCODER_FILE), decoder=str(pair_dir / contract.DECODER_FILE),
        tokens=str(pair_dir / contract.TOKENS_FILE), num_threads=args.threads, decoding_method="greedy_search",
    )  # fmt: skip
    load_s = time.perf_counter() - start
    wave = waveform(seconds)
    frames = 1 + (len(wave) - 400) // 160  # 25 ms window, 10 ms shift, snip_edges (sherpa's FireRed front end)

    def decode(cap: int) -> int:
        stream = rec.create_stream()
        stream.set_option("max_token_per_second", str(cap))
        stream.accept_waveform(SAMPLE_RATE, wave)
        rec.decode_stream(stream)
        n = len(stream.result.tokens)
        return n if n >= int(frames / 100 * cap) else n + 1  # stopped by eos: that step ran too

    raw, n, t = {}, [], []
    for cap in sherpa_caps(seconds, args.steps):
        n.append(decode(cap))
        median, runs = timed_median(lambda: decode(cap), args.warmup, args.repeats)
        t.append(median)
        raw[f"cap {cap}/s"] = {"steps": n[-1], "runs_s": runs}
    if len(set(n)) < 2:
        raise SystemExit(f"sherpa-onnx ran {n} steps at caps {sherpa_caps(seconds, args.steps)}: cannot fit a step time")
    step_s, rest_s = np.polyfit(n, t, 1)  # least squares: seconds = rest + steps x step
    timed = (f"whole decode of {seconds:g} s audio at {', '.join(map(str, n))} steps; step = fitted slope, "
             f"encoder = intercept (fbank + encoder + set-up)")  # fmt: skip
    if step_s <= 0:  # noise larger than the decoder's share: no step time to report
        step_s = rest_s = float("nan")
        timed += f"; NOT MEASURED: times {[round(v, 4) for v in t]} s did not grow with the steps"
    return dict(runtime=f"sherpa-onnx {sherpa_onnx.__version__} (bundled onnxruntime)", encoder_s=float(rest_s),
                step_s=float(step_s), load_s=load_s, timed=timed, raw=raw)  # fmt: skip


def run_system(name: str, args: argparse.Namespace, x: np.ndarray, mem: PeakRss) -> Timing:
    seconds = x.shape[1] / 100
    int8 = args.int8 or args.root / "int8"
    with mem.phase(name) as phase:
        if name == "official-eager":
            r = time_official(args.root / "ckpt", x, args)
        elif name.startswith("ours-"):
            r = time_ours(int8 if name == "ours-int8" else args.root / "fp32", x, args)
        else:
            r = time_sherpa(int8 if name == "sherpa-int8" else args.root / "int8-v1", seconds, args)
        gc.collect()  # the model goes before the next system loads
    e2e = r["encoder_s"] + args.steps * r["step_s"]
    return Timing(
        system=name, runtime=r["runtime"], encoder_ms=1e3 * r["encoder_s"], step_ms=1e3 * r["step_s"], steps=args.steps,
        e2e_s=e2e, rtf=e2e / seconds, load_s=r["load_s"], peak_rss_gib=phase.peak_bytes / GIB,
        peak_anon_gib=phase.peak_anon_bytes / GIB, timed=r["timed"], raw=r["raw"],
    )  # fmt: skip


def ratios(rows: dict[str, Timing]) -> dict[str, float]:
    """Speedups (> 1 = the first system named is faster) and the int8 RTFs, where both systems ran."""
    pairs = {
        "e2e speedup int8 vs official eager": ("official-eager", "ours-int8", "e2e_s"),
        "e2e speedup int8 vs our fp32": ("ours-fp32", "ours-int8", "e2e_s"),
        "encoder speedup int8 vs official eager": ("official-eager", "ours-int8", "encoder_ms"),
        "decoder step speedup int8 vs official eager": ("official-eager", "ours-int8", "step_ms"),
        "decoder step speedup ours vs v1-layout int8 (sherpa-onnx both)": ("sherpa-v1-int8", "sherpa-int8", "step_ms"),
        "decoder step speedup ours vs v1-layout int8 (our runtime vs sherpa v1)": ("sherpa-v1-int8", "ours-int8", "step_ms"),
    }
    out = {k: getattr(rows[a], f) / getattr(rows[b], f) for k, (a, b, f) in pairs.items() if a in rows and b in rows}
    for name in ("ours-int8", "sherpa-int8"):
        if name in rows:
            out[f"rtf {name}"] = rows[name].rtf
    return out


def check_targets(r: dict[str, float]) -> dict[str, dict]:
    checks = {k: {"value": r[k], "target": f">= {m}", "met": r[k] >= m} for k, m in TARGETS if k in r}
    if "rtf ours-int8" in r:
        checks["rtf ours-int8"] = {"value": r["rtf ours-int8"], "target": f"<= {MAX_RTF}", "met": r["rtf ours-int8"] <= MAX_RTF}
    return checks


def profile_by_op(pair_dir: Path, x: np.ndarray, steps: int, threads: int, out_dir: Path) -> dict:
    """ORT profile (enable_profiling) of one encoder run and `steps` decoder steps, after a warm-up run.

    Returns per graph: kernel ms per encoder run / per decoder step, summed by op type, largest first.
    """
    import onnxruntime as ort

    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = {}
    for role, fname in (("encoder", contract.ENCODER_FILE), ("decoder", contract.DECODER_FILE)):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = threads, 3
        so.enable_profiling, so.profile_file_prefix = True, str(out_dir / f"ort_profile_{role}")
        sessions[role] = ort.InferenceSession(str(pair_dir / fname), so, providers=["CPUExecutionProvider"])
    for _ in range(2):  # the first run is the warm-up, left out of the summary
        _raw_forced_decode(sessions["encoder"], sessions["decoder"], x, steps)
    return {role: _summarise(Path(s.end_profiling()), steps if role == "decoder" else 1) for role, s in sessions.items()}


def _raw_forced_decode(encoder, decoder, x: np.ndarray, steps: int) -> None:
    """Encoder + `steps` forced greedy steps on bare sessions (the profiled ones), contract names."""
    meta = contract.parse_metadata(encoder.get_modelmeta().custom_metadata_map, "encoder")
    cross_k, cross_v = encoder.run(None, dict(zip(["x", "x_len"], [x, np.array([x.shape[1]], dtype=np.int64)])))
    s = decoder.get_inputs()[1].shape[2]
    s = s if isinstance(s, int) else steps + 1
    cache = np.zeros((meta["num_decoder_layers"], 1, s, meta["num_head"], meta["head_dim"]), dtype=np.float32)
    k, v, token = cache, cache.copy(), meta["sos"]
    names = [n for n, _ in contract.DECODER_INPUTS]
    for t in range(steps):
        feed = [np.array([[token]], dtype=np.int64), k, v, cross_k, cross_v, np.array([t], dtype=np.int64)]
        logits, k, v = decoder.run(None, dict(zip(names, feed)))
        logits[0, 0, meta["eos"]] = -np.inf
        token = int(logits[0, 0].argmax())


def _summarise(trace: Path, calls_per_run: int) -> dict:
    """Kernel time by op type from an ORT profile, leaving out the first `calls_per_run` calls (warm-up)."""
    events = json.loads(trace.read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    if len(runs) <= calls_per_run:
        raise SystemExit(f"{trace}: {len(runs)} model_run events, expected more than {calls_per_run}")
    start, calls = runs[calls_per_run], len(runs) - calls_per_run
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3
    total = sum(by_op.values())
    rows = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"trace": str(trace), "ms_per_call": total / calls,
            "by_op": [{"op": op, "ms_per_call": ms / calls, "share": ms / total} for op, ms in rows]}  # fmt: skip


def markdown(rows: dict[str, Timing], r: dict[str, float], checks: dict, args: argparse.Namespace) -> str:
    lines = [
        f"{args.frames} frames ({args.frames / 100:g} s), {args.steps} forced decoder steps, {args.threads} threads, "
        f"median of {args.repeats} after {args.warmup} warm-up",
        "",
        "| system | runtime | encoder ms | decoder ms/step | e2e s | RTF | load s | peak RSS GiB (anon) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in rows.values():
        lines.append(f"| {t.system} | {t.runtime} | {t.encoder_ms:.1f} | {t.step_ms:.2f} | {t.e2e_s:.3f} | {t.rtf:.4f} "
                     f"| {t.load_s:.1f} | {t.peak_rss_gib:.2f} ({t.peak_anon_gib:.2f}) |")  # fmt: skip
    lines += ["", "| ratio | value | full-size target |", "|---|---|---|"]
    for k, v in r.items():
        c = checks.get(k)
        lines.append(f"| {k} | {v:.3f} | {c['target'] + (' met' if c['met'] else ' MISSED') if c else '-'} |")
    lines += ["", "What is timed:"] + [f"- {t.system}: {t.timed}" for t in rows.values()]
    return "\n".join(lines)


def profile_markdown(profile: dict, top: int = 10) -> str:
    lines = []
    for role, p in profile.items():
        lines += ["", f"ours-int8 {role}: {p['ms_per_call']:.2f} ms per {'run' if role == 'encoder' else 'step'} of kernel time",
                  "| op type | ms | share |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {o['op']} | {o['ms_per_call']:.3f} | {100 * o['share']:.1f}% |" for o in p["by_op"][:top]]
    return "\n".join(lines)


def contention(threads: int, own: bool = False) -> dict:
    """Load average against free cores: timings taken while other work holds the cores are not comparable.

    Thread pools with barriers (OpenMP, ORT) degrade far more than proportionally when
    a core they wait on is taken by another process: on a 2-core machine running a
    2-core job, 2-thread timings came out 10-100x slower and out of order.
    """
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    # `own`: read right after this benchmark's own `threads` threads ran, which the average includes
    return {"cores": cores, "load_avg_1min": load, "busy": load > cores - (0 if own else threads) + 0.5}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    busy_before = contention(args.threads)
    x = features(args.frames)
    rows: dict[str, Timing] = {}
    with PeakRss() as mem:
        for name in args.systems:
            rows[name] = run_system(name, args, x, mem)
            print(f"{name}: encoder {rows[name].encoder_ms:.1f} ms, step {rows[name].step_ms:.2f} ms", file=sys.stderr)
    r = ratios(rows)
    checks = check_targets(r)
    busy = [busy_before, contention(args.threads, own=True)]
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "host": platform.platform(), "contention": busy,
              "systems": {k: asdict(v) for k, v in rows.items()}, "ratios": r, "targets": checks}  # fmt: skip
    text = markdown(rows, r, checks, args)
    if any(b["busy"] for b in busy):
        text = (f"WARNING: load average {max(b['load_avg_1min'] for b in busy):.1f} on {busy[0]['cores']} cores with "
                f"{args.threads} threads: other processes held the cores, these timings are not comparable\n\n") + text
    missed = any(not c["met"] for c in checks.values())
    if "ours-int8" in rows and (args.profile == "always" or (args.profile == "on-miss" and missed)):
        out = (args.json or args.root / "cpu_benchmark.json").parent / "profiles"
        report["profile_ours_int8"] = profile_by_op(args.int8 or args.root / "int8", x, args.steps, args.threads, out)
        text += "\n" + profile_markdown(report["profile_ours_int8"])
    path = args.json or args.root / "cpu_benchmark.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
