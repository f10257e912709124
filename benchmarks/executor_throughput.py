"""Throughput of the executors: audio seconds decoded per wall second, local vs Ray.

One process: the eval set's features are computed once, then decoded by the local executor
(one Recognizer in this process), by the Ray executor with each worker count (actors on a
local cluster started once, before the clocks), and, with --ray-data and Ray Data installed
(`pip install "ray[data]"`), by Ray Data's `map_batches` over an actor pool of the same
size holding the same Recognizer. Every wall clock covers the whole call: session or actor
creation and pair loading included, cluster start excluded (printed on its own). Every
executor's hypotheses are checked against the local ones.

    python benchmarks/executor_throughput.py [--model artifacts/firered-aed-tiny] [--data calibration/eval]
                                             [--workers 1 2] [--threads 1] [--ray-data]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from optimize.evaluate.suite import EvalSettings, load_data
from optimize.recipe import EvaluationConfig
from optimize.runtime import executor
from optimize.runtime.search import DecodeConfig


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
    flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni') if f in flags)}"


def work_of(data) -> executor.Work:
    """Batch 1 in length order, as the evaluation builds it."""
    order = sorted(range(len(data.feats)), key=lambda i: len(data.feats[i]))
    return executor.Work(tuple((data.feats[i],) for i in order), tuple((data.names[i],) for i in order), tuple(data.seconds[i] for i in order))


def tokens(hyps) -> list:
    return [[h.tokens for h in batch] for batch in hyps]


def ray_data_decode(decoder: executor.Decoder, work: executor.Work, workers: int) -> list:
    """The same shards through Ray Data: one row per shard, an actor pool of `workers` Recognizers."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    plan = executor.shards(work.seconds, executor.shard_count(work.seconds, workers))
    ref = ray.put(work)

    class Decode:
        def __init__(self, work_ref):
            self.recognizer, self.work = decoder.recognizer(), ray.get(work_ref[0])

        def __call__(self, rows):
            out = {"shard": rows["shard"], "tokens": []}
            for s in rows["shard"]:
                hyps = [self.recognizer.recognize_features(list(self.work.batches[b])) for b in plan[s]]
                out["tokens"].append(repr([[h.tokens for h in batch] for batch in hyps]))
            return out

    ds = ray.data.from_items([{"shard": s} for s in range(len(plan))], override_num_blocks=len(plan))
    rows = ds.map_batches(Decode, fn_constructor_args=([ref],), batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                          num_cpus=max(decoder.threads, 1), batch_format="numpy").take_all()  # fmt: skip
    hyps: list = [None] * len(work.batches)
    for row in rows:
        for b, t in zip(plan[int(row["shard"])], eval(row["tokens"])):  # noqa: S307 - our own repr of int tuples
            hyps[b] = t
    return hyps


# Paper estimate inputs. Per-utterance cost of AED-L at 2 threads on this machine, BENCHMARKS.md 5.3
# run 2 (1000 frames = 10 s, batch 1, greedy): encoder ms per 10 s of audio, decoder ms per step,
# pair load s. AISHELL-1 test: 7176 utterances, 10 h; about 14 characters (= tokens) per
# utterance, +1 step for eos.
AED_L = {"fp32": (2538.1, 61.04, 20.2), "int8": (808.7, 28.72, 8.4)}
CPU_INT8_STAGES = ("fp32", "fp32", "fp32", "int8")  # baseline, simplify, fuse, int8
AISHELL1_TEST = (7176, 36000.0, 15)  # utterances, audio seconds, decoder steps per utterance
JOIN_S = 5.0  # joining the cluster and starting the actors, per stage evaluation


def estimate(nodes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> None:
    """Hours for the cpu_int8 pipeline's four evaluations of AISHELL-1 test on N 2-core nodes.

    Per stage: load the pair + join, then total decode / N, plus the tail: the last shard
    (SHARD_AUDIO_S of audio) runs alone on one node in the worst case.
    """
    utts, audio, steps = AISHELL1_TEST
    print("\n| nodes | " + " | ".join(f"{k} stage h" for k in AED_L) + " | cpu_int8 pipeline h (4 evaluations) |\n|---:|---:|---:|---:|")
    for n in nodes:
        per = {}
        for kind, (enc_ms, step_ms, load_s) in AED_L.items():
            work = utts * ((audio / utts) / 10.0 * enc_ms + steps * step_ms) / 1000.0
            tail = executor.SHARD_AUDIO_S * work / audio if n > 1 else 0.0
            per[kind] = (load_s + JOIN_S + work / n + tail) / 3600
        total = sum(per[k] for k in CPU_INT8_STAGES)
        print(f"| {n} | " + " | ".join(f"{v:.2f}" for v in per.values()) + f" | {total:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("artifacts/firered-aed-tiny"))
    ap.add_argument("--data", type=Path, default=Path("calibration/eval"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ray-data", action="store_true", help="also time Ray Data map_batches with an actor pool")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the Ray executors")
    ap.add_argument("--estimate-only", action="store_true", help="print only the AED-L paper estimate")
    args = ap.parse_args()
    if args.estimate_only:
        return estimate()

    decode = DecodeConfig()
    start = time.perf_counter()
    data = load_data(args.model, args.data, EvalSettings("cpu", args.threads, decode, EvaluationConfig()))
    features_s = time.perf_counter() - start
    work = work_of(data)
    decoder = executor.Decoder(args.model, decode, "cpu", args.threads)
    audio = sum(work.seconds)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu()}; load average {os.getloadavg()[0]:.1f}")
    print(f"# {args.model}, {len(work.batches)} utterances, {audio:.1f} s audio, beam {decode.beam_size}, {args.threads} thread(s) per worker")
    print(f"# driver: audio reading + fbank + CMVN of the eval set {features_s:.1f} s (RTF {features_s / audio:.4f}; not in the walls below)")
    rows = []
    start = time.perf_counter()
    local = executor.decode(decoder, work, 0, "benchmark")
    rows.append(("local", 1, time.perf_counter() - start, local.rtf.processing_seconds, True))
    start = time.perf_counter()
    ray, _ = executor.connect(None, max(args.workers) * max(args.threads, 1))
    print(f"# local Ray cluster start: {time.perf_counter() - start:.1f} s (not in the walls below)")
    for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits every executor
        for w in args.workers:
            start = time.perf_counter()
            out = executor.decode(decoder, work, 0, "benchmark", "ray", workers=w)
            same = tokens(out.hyps) == tokens(local.hyps)
            rows.append((f"ray actors ({out.throughput['shards']} shards)", w, time.perf_counter() - start, out.rtf.processing_seconds, same))
            if args.ray_data:
                start = time.perf_counter()
                hyps = ray_data_decode(decoder, work, w)
                rows.append(("ray data map_batches", w, time.perf_counter() - start, None, hyps == tokens(local.hyps)))
    ray.shutdown()
    print(f"# load average after: {os.getloadavg()[0]:.1f}\n")
    print("| executor | workers | wall s | audio s per wall s | vs local | decoding s (sum over workers) | hypotheses = local |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, w, wall, busy, same in rows:
        busy_s = "n/a" if busy is None else f"{busy:.1f}"
        print(f"| {name} | {w} | {wall:.1f} | {audio / wall:.1f} | {rows[0][2] / wall:.2f}x | {busy_s} | {'yes' if same else 'NO'} |")
    estimate()


if __name__ == "__main__":
    main()
