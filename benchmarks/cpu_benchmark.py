"""Side-by-side CPU benchmark: official PyTorch eager vs our ONNX pairs vs sherpa-onnx, one run.

    python benchmarks/make_aed_l.py work/aed_l          # once: checkpoint, exports, int8 pairs, variants
    python benchmarks/cpu_benchmark.py work/aed_l       # --int8 DIR to time a pipeline output instead

ROOT is a make_aed_l.py output (ckpt/, fp32/, int8/, int8-v1/, and the variants int4dec/,
int4ffn/ and int8-static/ where present). Systems, timed one after another (each loaded, timed and
freed before the next, so that only one model is in memory):
  official-eager  fireredasr==0.0.2 FireRedAsrAed, torch fp32: `encoder(x, x_len)`, then
                  `decoder.batch_beam_search` at each --beams with decode_max_len = each
                  --steps and eos disabled, so it runs exactly that many steps
  ours-fp32       our runtime (`optimize bench`: encoder, then the greedy search) on ROOT/fp32
  ours-int8-spinning  the same on the int8 pair with ORT's intra-op spinning on (our runtime
                  decides it from the host's load, "auto"; ORT and sherpa-onnx leave it on)
  ours-<variant>  the same on each variant pair (--variants; int8 = --int8 or ROOT/int8), at
                  each --beams x --steps, and at each --batches (beam 1, first --steps, and
                  each --batch-regimes beam x steps) for aggregate throughput (B copies of
                  the input decoded as one batch)
  ours-int8-stacked  ours-int8 with the decoder run as published (ProviderOptions
                  rewrite_decoder off, runtime/decoder_graph.py): what our runtime ran before;
                  encoder + greedy only (decoder_step.py compares beams and batches)
  sherpa-<variant>  sherpa_onnx.OfflineRecognizer.from_fire_red_asr (greedy) on the same pair
  sherpa-v1-int8  the same on ROOT/int8-v1, the published v1 layout (self-cache fixed at 1024)

Our runtime is timed by `optimize bench`'s own code (optimize.evaluate.bench.Bench), so the
two report one number for one pair and setting: per run, the encoder, then the recognizer's
search (greedy or beam, with its argmax/top-k, reorders and cache handling) with eos
suppressed, so it runs exactly `steps` steps; each phase is clocked within the run, and a
step is the median search time / steps.

Input: --frames fbank frames (1000 = 10 s) of CMVN-normalized random features for the first
three; sherpa-onnx takes a waveform of the same duration (it computes its own fbank: 998
frames for 10 s) and cannot be told a step count, only a cap, `max_token_per_second`
(steps = floor(seconds x cap) when no eos comes, and the benchmark's checkpoints never emit
eos: make_aed_l.py zeroes its embedding row). It is timed whole (create_stream +
accept_waveform + decode_stream) at two caps; the slope gives its decoder ms/step, and the
rest (fbank, encoder, set-up) is its encoder time. All clocks are medians over --repeats
after --warmup untimed runs, with --threads threads. End-to-end = encoder + steps x step,
RTF = end-to-end / audio seconds, for every system alike.

Memory is taken outside every clock. Peak RSS per system is the kernel's high-water mark
(VmHWM, reset through /proc/self/clear_refs before each system loads: exact, no sampling);
the anonymous part is sampled every 2 ms only during the untimed warm-up runs (the same
calls as the timed ones) and read where each system starts and ends. The sampler process is
paused (PeakRss.paused) for every load and every block of timed runs: running beside a
2-thread session on 2 cores it slowed what it watched (BENCHMARKS 5.3: int8 step +18-26%).
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
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from optimize import contract
from optimize.evaluate.bench import Quiet
from optimize.evaluate.memory import GIB, PeakRss, max_rss_bytes, reset_high_water

VARIANTS = ("int8", "int4dec", "int4ffn", "int8-static")  # our pairs: make_aed_l.py step names
# ours-int8-spinning: our runtime on the int8 pair with ORT's intra-op spinning on (ORT's and
# sherpa-onnx's default; ours is off, runtime/providers.py), encoder + greedy only
SYSTEMS = ("official-eager", "ours-fp32", *(f"ours-{v}" for v in VARIANTS), "ours-int8-spinning", "ours-int8-stacked",
           *(f"sherpa-{v}" for v in VARIANTS), "sherpa-v1-int8")  # fmt: skip
SAMPLE_RATE = 16000
# The targets at full AED-L size: (ratio key, minimum); "<=" ones are maxima (TARGET_MAXIMA).
TARGETS = (
    ("e2e speedup int8 vs official eager", 6.0),
    ("e2e speedup int8 vs our fp32", 2.5),
    ("decoder step speedup ours vs v1-layout int8 (sherpa-onnx both)", 3.0),
    ("decoder step speedup ours vs v1-layout int8 (our runtime vs sherpa v1)", 3.0),
    *((f"e2e speedup {v} vs official eager", 10.0) for v in VARIANTS),
    *((f"e2e speedup ours vs sherpa-onnx, {v} pair", 1.0) for v in VARIANTS),
    ("decoder step speedup int4dec vs int8 (our runtime)", 1.7),
    ("decoder step speedup int4ffn vs int8 (our runtime)", 1.7),
    *((f"batch 16 vs batch 1 throughput, {v}", 4.0) for v in VARIANTS),
)
TARGET_MAXIMA = tuple((f"beam 3 vs greedy per step, {v}", 1.5) for v in VARIANTS) + (("rtf ours-int8", 0.25),)


@dataclass(frozen=True)
class Timing:
    system: str
    runtime: str  # what executes the model
    encoder_ms: float  # median encoder time, batch 1 (sherpa: everything but the decoder steps)
    step_ms: float  # median decoder time per step, greedy, batch 1, the first --steps
    steps: int  # decoder steps in the end-to-end figure (the first --steps)
    e2e_s: float  # encoder + steps x step
    rtf: float  # e2e / audio seconds
    load_s: float  # model load (not in e2e)
    peak_rss_gib: float  # peak RSS from load to free (VmHWM; exact where it could be reset)
    peak_anon_gib: float  # the same, without file-backed pages (sampled in the warm-ups, read at the ends)
    timed: str  # what the clocks cover
    raw: dict  # per-repeat seconds and any derivation inputs
    step_ms_by: dict  # "beam B, S steps" -> ms per step (batch 1), where measured
    throughput: dict  # "batch B" -> audio seconds decoded per wall second (beam 1, first --steps)
    memory: dict  # how peak_rss_gib was taken, and the samples behind peak_anon_gib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="make_aed_l.py output: ckpt/, fp32/, int8/, int8-v1/")
    p.add_argument("--int8", type=Path, default=None, help="int8 pair to time as ours (default ROOT/int8)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=None, help="systems to time (default: all whose pair exists)")
    p.add_argument("--frames", type=int, default=1000, help="input length in 10 ms fbank frames (1000 = 10 s)")
    p.add_argument("--steps", type=int, nargs="+", default=[32, 64], help="decoder step counts (eos never comes); the first is the headline")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="beam sizes for official-eager and our variants")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="batch sizes for our variants' throughput (beam 1)")
    p.add_argument("--batch-regimes", type=regime, nargs="+", default=[],
                   help="BxS: also time the --batches at beam B and S steps (e.g. 3x64, the decode-heavy case: 30-60 tokens per 10 s, beam 3)")  # fmt: skip
    p.add_argument("--official-grid", choices=("full", "headline"), default="full",
                   help="official-eager at every beam x steps, or only greedy at the first --steps (it is the slowest system)")  # fmt: skip
    p.add_argument("--official-repeats", type=int, default=None,
                   help="timed runs of official-eager (default --repeats; at AED-L size on a busy machine one run is minutes)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every system")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (the median is reported)")
    p.add_argument("--profile", choices=("on-miss", "always", "never"), default="on-miss",
                   help="ORT profile of our variants by op type: when a target is missed, always, or never")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="results file (default ROOT/cpu_benchmark.json)")
    return p.parse_args(argv)


def regime(text: str) -> tuple[int, int]:
    """"3x64" -> (beam 3, 64 steps)."""
    beam, steps = (int(v) for v in text.lower().split("x"))
    return beam, steps


def regime_key(batch: int, beam: int, steps: int) -> str:
    return f"batch {batch}, beam {beam}, {steps} steps"


def features(frames: int, seed: int = 0) -> np.ndarray:
    """CMVN-normalized-like features: shape = (1, frames, 80), float32, N(0, 1)."""
    return np.random.default_rng(seed).standard_normal((1, frames, 80)).astype(np.float32)


def waveform(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise at speech level: shape = (seconds x 16000,), float32 in [-1, 1]."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)


def timed_median(fn: Callable[[], object], warmup: int, repeats: int, quiet: Quiet = nullcontext) -> tuple[float, list[float]]:
    """Median wall seconds of `fn` over `repeats` calls after `warmup` untimed ones; the timed calls run inside `quiet()`."""
    for _ in range(warmup):
        fn()
    spent = []
    with quiet():
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


def time_official(ckpt: Path, x: np.ndarray, args: argparse.Namespace, quiet: Quiet = nullcontext) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    with quiet():
        start = time.perf_counter()
        model = official_model(ckpt)
        load_s = time.perf_counter() - start
    model.decoder.eos_id = -1  # no token equals -1: batch_beam_search never finishes early
    feats, lengths = torch.from_numpy(x), torch.tensor([x.shape[1]])
    raw, by = {}, {}
    repeats = args.official_repeats or args.repeats
    with torch.inference_mode():
        enc_s, raw["encoder_runs_s"] = timed_median(lambda: model.encoder(feats, lengths), args.warmup, repeats, quiet)
        enc, _, mask = model.encoder(feats, lengths)
        for beam, steps in search_grid(args) if args.official_grid == "full" else [(1, args.steps[0])]:

            def decode():
                hyps = model.decoder.batch_beam_search(enc, mask, beam_size=beam, nbest=1, decode_max_len=steps)
                assert len(hyps[0][0]["yseq"]) == steps, f"official decode ran {len(hyps[0][0]['yseq'])} steps, want {steps}"

            dec_s, raw[f"decode beam {beam}, {steps} steps runs_s"] = timed_median(decode, args.warmup, repeats, quiet)
            by[grid_key(beam, steps)] = dec_s / steps
    timed = f"encoder(x, x_len); batch_beam_search(beam B, decode_max_len=S) / S; median of {repeats} after {args.warmup} warm-up"
    return dict(runtime=f"torch {torch.__version__} eager fp32", encoder_s=enc_s, step_s=by[grid_key(1, args.steps[0])],
                load_s=load_s, timed=timed, raw=raw, step_s_by=by)  # fmt: skip


def search_grid(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(beam, steps) pairs to time: greedy at every step count, other beams at every step count."""
    return [(b, n) for b in args.beams for n in args.steps]


def grid_key(beam: int, steps: int) -> str:
    return f"beam {beam}, {steps} steps"


def time_ours(pair_dir: Path, x: np.ndarray, args: argparse.Namespace, full: bool, spinning: bool = False, stacked: bool = False,
              quiet: Quiet = nullcontext) -> dict:  # fmt: skip
    """Our runtime through `optimize bench`'s own code; `full`: the beam grid and the batch sizes too.

    `spinning`: ORT's intra-op spinning on (our runtime decides it from the host's load, "auto").
    `stacked`: the decoder run as published, not rewritten (runtime/decoder_graph.py).
    `quiet`: entered around the load and each block of timed runs.
    """
    import onnxruntime as ort

    from optimize.evaluate.bench import Bench, BenchConfig

    batches = sorted(set(args.batches) | {1}) if full else [1]
    cfg = BenchConfig(frames=x.shape[1], steps=args.steps[0], threads=args.threads, spinning=True if spinning else None,
                      rewrite_decoder=not stacked, warmup=args.warmup, repeats=args.repeats)  # fmt: skip
    with quiet():
        start = time.perf_counter()
        bench = Bench(pair_dir, cfg, quiet=quiet)
        load_s = time.perf_counter() - start
    raw, by, throughput, totals = {}, {}, {}, {}
    for beam, steps in search_grid(args) if full else [(1, args.steps[0])]:
        r = bench.measure(beam=beam, steps=steps)
        by[grid_key(beam, steps)] = r.decoder_ms_per_step / 1e3
        raw[f"{grid_key(beam, steps)} runs_ms (encoder, search)"] = r.runs_ms
        totals[beam, steps] = r
    headline = totals[1, args.steps[0]]
    for batch in batches:
        r = headline if batch == 1 else bench.measure(batch=batch)
        if batch > 1:
            raw[f"batch {batch} runs_ms (encoder, search)"] = r.runs_ms
        throughput[f"batch {batch}"] = batch * x.shape[1] / 100 / (r.total_ms / 1e3)
    for beam, steps in args.batch_regimes if full else []:
        for batch in batches:
            r = totals[beam, steps] if batch == 1 and (beam, steps) in totals else bench.measure(batch=batch, beam=beam, steps=steps)
            raw[f"{regime_key(batch, beam, steps)} runs_ms (encoder, search)"] = r.runs_ms
            throughput[regime_key(batch, beam, steps)] = batch * x.shape[1] / 100 / (r.total_ms / 1e3)
    timed = ("optimize bench (optimize.evaluate.bench.Bench): per run, encoder then the recognizer's search (beam B, eos suppressed, "
             f"exactly S steps), each clocked; step = median search / S; throughput = B x audio seconds / median(encoder + search) at "
             f"beam 1, {args.steps[0]} steps")  # fmt: skip
    runtime = f"onnxruntime {ort.__version__} (our runtime, {'decoder as published, ' if stacked else ''}intra-op spinning {bench.pair.spinning})"
    return dict(runtime=runtime, encoder_s=headline.encoder_ms / 1e3, step_s=by[grid_key(1, args.steps[0])],
                load_s=load_s, timed=timed, raw=raw, step_s_by=by, throughput=throughput)  # fmt: skip


def sherpa_caps(seconds: float, steps: int) -> tuple[int, ...]:
    """max_token_per_second caps for the fit: 1/s, 2/s and one giving at least `steps` steps."""
    return (1, 2, max(3, math.ceil(steps / seconds)))


def time_sherpa(pair_dir: Path, seconds: float, args: argparse.Namespace, quiet: Quiet = nullcontext) -> dict:
    import sherpa_onnx

    with quiet():
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
    for cap in sherpa_caps(seconds, args.steps[0]):
        n.append(decode(cap))
        median, runs = timed_median(lambda: decode(cap), args.warmup, args.repeats, quiet)
        t.append(median)
        raw[f"cap {cap}/s"] = {"steps": n[-1], "runs_s": runs}
    if len(set(n)) < 2:
        raise SystemExit(f"sherpa-onnx ran {n} steps at caps {sherpa_caps(seconds, args.steps[0])}: cannot fit a step time")
    step_s, rest_s = np.polyfit(n, t, 1)  # least squares: seconds = rest + steps x step
    timed = (f"whole decode of {seconds:g} s audio at {', '.join(map(str, n))} steps; step = fitted slope, "
             f"encoder = intercept (fbank + encoder + set-up)")  # fmt: skip
    if step_s <= 0 or rest_s <= 0:  # noise larger than the decoder's (or the encoder's) share: nothing to report
        step_s = rest_s = float("nan")
        timed += f"; NOT MEASURED: times {[round(v, 4) for v in t]} s at {n} steps fit no positive step and encoder time"
    return dict(runtime=f"sherpa-onnx {sherpa_onnx.__version__} (bundled onnxruntime)", encoder_s=float(rest_s),
                step_s=float(step_s), load_s=load_s, timed=timed, raw=raw)  # fmt: skip


def pair_of(name: str, args: argparse.Namespace) -> Path:
    """The pair a system of ours or sherpa-onnx's runs."""
    variant = name.split("-", 1)[1].removesuffix("-spinning").removesuffix("-stacked")
    if variant == "int8" and args.int8:
        return args.int8
    return args.root / ("int8-v1" if variant == "v1-int8" else variant)


def run_system(name: str, args: argparse.Namespace, x: np.ndarray, mem: PeakRss) -> Timing:
    """Load, time and free one system. The memory sampler runs only in the untimed warm-ups (mem.paused elsewhere)."""
    seconds = x.shape[1] / 100
    exact = reset_high_water()  # then the phase's peak RSS is VmHWM: the load's peak too, which no sample sees
    samples = mem.samples
    with mem.phase(name) as phase:
        if name == "official-eager":
            r = time_official(args.root / "ckpt", x, args, mem.paused)
        elif name.startswith("ours-"):
            r = time_ours(pair_of(name, args), x, args, full=name not in ("ours-fp32", "ours-int8-spinning", "ours-int8-stacked"),
                          spinning=name.endswith("-spinning"), stacked=name.endswith("-stacked"), quiet=mem.paused)  # fmt: skip
        else:
            r = time_sherpa(pair_of(name, args), seconds, args, mem.paused)
        gc.collect()  # the model goes before the next system loads
    peak = max(phase.peak_bytes, max_rss_bytes()) if exact else phase.peak_bytes  # VmHWM: the peak since the reset, whatever rose
    memory = {"peak_rss": "VmHWM since the reset" if exact else "sampled (warm-ups) and read at the ends",
              "anon_samples_in_warmups": mem.samples - samples}  # fmt: skip
    steps = args.steps[0]
    # a step derived from a difference of medians can come out <= 0 when the load changes
    # faster than the runs: then there is no end-to-end figure, and no ratio is formed from it
    if not r["step_s"] > 0:  # every system's timing says so in one place, whichever path derived it
        r = r | {"step_s": float("nan"), "timed": r["timed"] + ("" if "NOT MEASURED" in r["timed"] else "; NOT MEASURED: derived step time <= 0")}
    e2e = r["encoder_s"] + steps * r["step_s"] if r["step_s"] > 0 else float("nan")
    return Timing(
        system=name, runtime=r["runtime"], encoder_ms=1e3 * r["encoder_s"], step_ms=1e3 * r["step_s"], steps=steps,
        e2e_s=e2e, rtf=e2e / seconds, load_s=r["load_s"], peak_rss_gib=peak / GIB,
        peak_anon_gib=phase.peak_anon_bytes / GIB, timed=r["timed"], raw=r["raw"],
        step_ms_by={k: 1e3 * v for k, v in r.get("step_s_by", {}).items()}, throughput=r.get("throughput", {}), memory=memory,
    )  # fmt: skip


def ratios(rows: dict[str, Timing], args: argparse.Namespace) -> dict[str, float]:
    """Speedups (> 1 = the first system named is slower) and other ratios, where both systems ran."""
    pairs = {
        "e2e speedup int8 vs official eager": ("official-eager", "ours-int8", "e2e_s"),
        "e2e speedup int8 vs our fp32": ("ours-fp32", "ours-int8", "e2e_s"),
        "encoder speedup int8 vs official eager": ("official-eager", "ours-int8", "encoder_ms"),
        "decoder step speedup int8 vs official eager": ("official-eager", "ours-int8", "step_ms"),
        "decoder step speedup ours vs v1-layout int8 (sherpa-onnx both)": ("sherpa-v1-int8", "sherpa-int8", "step_ms"),
        "decoder step speedup ours vs v1-layout int8 (our runtime vs sherpa v1)": ("sherpa-v1-int8", "ours-int8", "step_ms"),
        "decoder step speedup int4dec vs int8 (our runtime)": ("ours-int8", "ours-int4dec", "step_ms"),
        "decoder step speedup int4ffn vs int8 (our runtime)": ("ours-int8", "ours-int4ffn", "step_ms"),
        "encoder speedup int8-static vs int8 (our runtime)": ("ours-int8", "ours-int8-static", "encoder_ms"),
        "e2e speedup int8 ours (spinning auto) vs spinning on": ("ours-int8-spinning", "ours-int8", "e2e_s"),
        "encoder speedup int8 ours (spinning auto) vs spinning on": ("ours-int8-spinning", "ours-int8", "encoder_ms"),
        "decoder step speedup int8 ours vs decoder as published (our runtime)": ("ours-int8-stacked", "ours-int8", "step_ms"),
        **{f"e2e speedup {v} vs official eager": ("official-eager", f"ours-{v}", "e2e_s") for v in VARIANTS},
        **{f"e2e speedup ours vs sherpa-onnx, {v} pair": (f"sherpa-{v}", f"ours-{v}", "e2e_s") for v in VARIANTS},
        **{f"encoder speedup ours vs sherpa-onnx, {v} pair": (f"sherpa-{v}", f"ours-{v}", "encoder_ms") for v in VARIANTS},
    }
    # a step derived as (whole - encoder) / steps can come out <= 0 on a tiny model or a busy
    # machine: no ratio is formed from it
    out = {k: getattr(rows[a], f) / getattr(rows[b], f) for k, (a, b, f) in pairs.items()
           if a in rows and b in rows and getattr(rows[a], f) > 0 and getattr(rows[b], f) > 0}  # fmt: skip
    for name, t in rows.items():
        variant = name.split("-", 1)[1]
        for steps in args.steps:
            greedy, beam3 = t.step_ms_by.get(grid_key(1, steps)), t.step_ms_by.get(grid_key(3, steps))
            if greedy and beam3 and greedy > 0 and beam3 > 0:
                label = variant if name.startswith("ours-") else name
                out[f"beam 3 vs greedy per step, {label}" + ("" if steps == args.steps[0] else f" ({steps} steps)")] = beam3 / greedy
        if "batch 1" in t.throughput and "batch 16" in t.throughput:
            out[f"batch 16 vs batch 1 throughput, {variant}"] = t.throughput["batch 16"] / t.throughput["batch 1"]
        for beam, steps in args.batch_regimes:
            one, many = (t.throughput.get(regime_key(b, beam, steps)) for b in (1, 16))
            if one and many:
                out[f"batch 16 vs batch 1 throughput, {variant} (beam {beam}, {steps} steps)"] = many / one
    for name in ("ours-int8", "sherpa-int8"):
        if name in rows:
            out[f"rtf {name}"] = rows[name].rtf
    return out


def check_targets(r: dict[str, float]) -> dict[str, dict]:
    checks = {k: {"value": r[k], "target": f">= {m}", "met": r[k] >= m} for k, m in TARGETS if k in r}
    checks |= {k: {"value": r[k], "target": f"<= {m}", "met": r[k] <= m} for k, m in TARGET_MAXIMA if k in r}
    return checks


def profile_by_op(pair_dir: Path, frames: int, steps: int, threads: int, out_dir: Path) -> dict:
    """ORT profile of one `optimize bench` run (encoder, then `steps` greedy steps) after a warm-up run.

    Returns per graph: kernel ms per encoder run / per decoder step, summed by op type, largest first.
    """
    from optimize.evaluate.bench import Bench, BenchConfig, profile_by_op as summarise

    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(pair_dir, BenchConfig(frames=frames, steps=steps, threads=threads), profile=out_dir / "ort_profile")
    for _ in range(2):  # the first run is the warm-up, left out of the summary
        bench.run()
    sessions = {"encoder": bench.pair.encoder, "decoder": bench.pair.decoder}
    return {role: summarise(Path(s.end_profiling()), steps if role == "decoder" else 1) for role, s in sessions.items()}


def markdown(rows: dict[str, Timing], r: dict[str, float], checks: dict, args: argparse.Namespace) -> str:
    steps = args.steps[0]
    lines = [
        f"{args.frames} frames ({args.frames / 100:g} s), {steps} decoder steps end to end, {args.threads} threads, "
        f"median of {args.repeats} after {args.warmup} warm-up; CPU: {cpu_model()}",
        "",
        "| system | runtime | encoder ms | decoder ms/step | e2e s | RTF | load s | peak RSS GiB (anon) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in rows.values():
        lines.append(f"| {t.system} | {t.runtime} | {t.encoder_ms:.1f} | {t.step_ms:.2f} | {t.e2e_s:.3f} | {t.rtf:.4f} "
                     f"| {t.load_s:.1f} | {t.peak_rss_gib:.2f} ({t.peak_anon_gib:.2f}) |")  # fmt: skip
    grid = [grid_key(b, n) for b, n in search_grid(args)]
    by_rows = [t for t in rows.values() if t.step_ms_by]
    if by_rows:
        lines += ["", "| system | " + " | ".join(f"ms/step {g}" for g in grid) + " |", "|---|" + "---|" * len(grid)]
        lines += [f"| {t.system} | " + " | ".join(f"{t.step_ms_by[g]:.2f}" if g in t.step_ms_by else "-" for g in grid) + " |" for t in by_rows]
    batches = [f"batch {b}" for b in sorted(set(args.batches) | {1})]
    batches += [regime_key(b, beam, steps) for beam, steps in args.batch_regimes for b in sorted(set(args.batches) | {1})]
    tp_rows = [t for t in rows.values() if t.throughput]
    if tp_rows:
        lines += ["", f"| system | " + " | ".join(f"audio s/s {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
        lines += [f"| {t.system} | " + " | ".join(f"{t.throughput[b]:.2f}" if b in t.throughput else "-" for b in batches) + " |" for t in tp_rows]
    lines += ["", "| ratio | value | full-size target |", "|---|---|---|"]
    for k, v in r.items():
        c = checks.get(k)
        lines.append(f"| {k} | {v:.3f} | {c['target'] + (' met' if c['met'] else ' MISSED') if c else '-'} |")
    lines += ["", "What is timed:"] + [f"- {t.system}: {t.timed}" for t in rows.values()]
    lines += ["", "Memory (outside every clock): peak RSS = VmHWM reset before each system where the kernel allows (else sampled); "
              "anon sampled every 2 ms in the warm-ups only, the sampler paused during each load and each block of timed runs"]  # fmt: skip
    return "\n".join(lines)


def cpu_model() -> str:
    """lscpu's model name and the SIMD flags that decide the int8/int4 kernels."""
    from optimize.host import cpu_summary

    return cpu_summary()


def profile_markdown(profile: dict, name: str, top: int = 10) -> str:
    lines = []
    for role, p in profile.items():
        lines += ["", f"{name} {role}: {p['ms_per_call']:.2f} ms per {'run' if role == 'encoder' else 'step'} of kernel time",
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


def default_systems(args: argparse.Namespace) -> list[str]:
    """Every system whose pair (or checkpoint) exists under ROOT."""
    names = []
    for name in SYSTEMS:
        path = args.root / "ckpt" if name == "official-eager" else args.root / "fp32" if name == "ours-fp32" else pair_of(name, args)
        if path.exists():
            names.append(name)
    return names


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.systems = args.systems or default_systems(args)
    busy_before = contention(args.threads)
    x = features(args.frames)
    rows: dict[str, Timing] = {}
    with PeakRss() as mem:
        for name in args.systems:
            rows[name] = run_system(name, args, x, mem)
            print(f"{name}: encoder {rows[name].encoder_ms:.1f} ms, step {rows[name].step_ms:.2f} ms", file=sys.stderr)
    r = ratios(rows, args)
    checks = check_targets(r)
    busy = [busy_before, contention(args.threads, own=True)]
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "host": platform.platform(), "cpu": cpu_model(),
              "contention": busy, "systems": {k: asdict(v) for k, v in rows.items()}, "ratios": r, "targets": checks}  # fmt: skip
    text = markdown(rows, r, checks, args)
    if any(b["busy"] for b in busy):
        text = (f"WARNING: load average {max(b['load_avg_1min'] for b in busy):.1f} on {busy[0]['cores']} cores with "
                f"{args.threads} threads: other processes held the cores, these timings are not comparable\n\n") + text
    missed = any(not c["met"] for c in checks.values())
    if args.profile == "always" or (args.profile == "on-miss" and missed):
        out = (args.json or args.root / "cpu_benchmark.json").parent / "profiles"
        for name in [n for n in rows if n.startswith("ours-") and n not in ("ours-fp32", "ours-int8-spinning", "ours-int8-stacked")]:
            report[f"profile_{name}"] = profile_by_op(pair_of(name, args), args.frames, args.steps[0], args.threads, out / name)
            text += "\n" + profile_markdown(report[f"profile_{name}"], name)
    path = args.json or args.root / "cpu_benchmark.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
