"""`optimize bench`: one pair's encoder and decoder steps timed through the recognizer's decode path."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from stage_helpers import cli

from optimize.errors import OptimizeError
from optimize.evaluate.bench import BenchConfig, bench
from optimize.runtime import session
from optimize.runtime.session import OrtPair

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_times_the_requested_shape_on_both_paths(tiny_pair, tiny_pair_v1):
    cfg = BenchConfig(frames=120, steps=5, batch=2, beam=2, threads=1, warmup=0, repeats=1)
    plain, bound = bench(tiny_pair, cfg), bench(tiny_pair, BenchConfig(**{**cfg.__dict__, "io_binding": True}))
    for r in (plain, bound):
        assert r.rows == 4 and r.steps == 5 and r.encoder_ms > 0 and r.decoder_ms_per_step > 0
        assert r.total_ms == pytest.approx(r.encoder_ms + r.decoder_ms_per_step * 5, rel=1e-6)
        assert r.rtf == pytest.approx(r.total_ms / 1e3 / (2 * 120 * 0.01))
        assert len(r.runs_ms) == 1 and all(ms > 0 for ms in r.runs_ms[0])
    assert (plain.io_binding, bound.io_binding) == (False, True)
    with pytest.raises(OptimizeError, match="frames=4"):
        BenchConfig(frames=4)


def test_bench_cli_runs_pairs_side_by_side(tiny_pair, tiny_pair_v1, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", tiny_pair, tiny_pair_v1, "--frames", "80", "--steps", "3", "--repeats", "1", "--threads", "1", "--json", out)
    assert result.exit_code == 0, result.stderr
    record = json.loads(out.read_text())
    assert [r["pair"] for r in record["results"]] == [str(tiny_pair), str(tiny_pair_v1)]
    assert record["settings"]["frames"] == 80 and record["cpu"]
    assert len(result.stdout.strip().splitlines()) == 3


@pytest.mark.parametrize("spinning", [False, True])
def test_cpu_benchmark_and_optimize_bench_run_the_same_sessions_and_steps(tiny_pair, monkeypatch, spinning):
    """One pair, one setting: the side-by-side script's "ours" rows and `optimize bench` open sessions with the
    same options and make the same encoder and decoder calls (rows, positions), so their step times can only
    differ by noise. (Their AED-L decoder steps once differed 2x, from two decode paths timed differently.)"""
    calls: list[tuple] = []
    real_load, real_encode, real_step = session.load_session, OrtPair.encode, OrtPair.decoder_step

    def load(path, provider, threads, options, profile=None):
        where = str(path)
        if not isinstance(path, bytes) and Path(path).parent.name.startswith("optimize-decoder-"):
            where = Path(path).name  # the runtime's temporary copy of the rewritten decoder: a new directory each load
        calls.append(("session", where, provider, threads, options, profile))
        return real_load(path, provider, threads, options, profile)

    def encode(self, x, x_len):
        calls.append(("encode", x.shape, x_len.tolist(), float(np.abs(x).sum())))
        return real_encode(self, x, x_len)

    def step(self, tokens, k, v, cross_k, cross_v, offset, mask=None, cross_feed=None):
        calls.append(("step", tokens.shape, k.shape, offset, mask is None, cross_feed is None))
        return real_step(self, tokens, k, v, cross_k, cross_v, offset, mask, cross_feed)

    monkeypatch.setattr(session, "load_session", load)
    monkeypatch.setattr(OrtPair, "encode", encode)
    monkeypatch.setattr(OrtPair, "decoder_step", step)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cb = importlib.import_module("cpu_benchmark")
    args = cb.parse_args([str(tiny_pair.parent), "--frames", "90", "--steps", "4", "--beams", "1", "--batches", "1",
                          "--threads", "1", "--warmup", "1", "--repeats", "2"])  # fmt: skip
    ours = cb.time_ours(tiny_pair, cb.features(args.frames), args, full=False, spinning=spinning)
    script_calls, calls[:] = list(calls), []
    r = bench(tiny_pair, BenchConfig(frames=90, steps=4, threads=1, spinning=spinning, warmup=1, repeats=2))
    assert calls == script_calls
    assert [c[0] for c in calls].count("step") == 3 * 4 and calls[0][4].intra_op_spinning is spinning  # 1 warm-up + 2 timed runs
    assert ours["step_s"] > 0 and r.decoder_ms_per_step > 0


def test_cpu_benchmark_samples_memory_only_outside_its_clocks(tiny_pair, monkeypatch):
    """The 2 ms memory sampler slowed the sessions it watched on 2 cores (BENCHMARKS 5.3): cpu_benchmark runs it
    in the untimed warm-ups only. Checked structurally: at every load and every timed run the sampler is paused
    and takes no sample; in the warm-ups it samples."""
    from optimize.evaluate.bench import Bench
    from optimize.evaluate.memory import PeakRss

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    cb = importlib.import_module("cpu_benchmark")
    seen: list[tuple[str, bool, int]] = []  # (what, sampling, samples taken during it)
    real_run, real_init = Bench.run, Bench.__init__

    def run(self, cfg=None):
        before = mem.samples
        out = real_run(self, cfg)
        seen.append(("run", mem.sampling, mem.samples - before))
        return out

    def init(self, *a, **k):
        real_init(self, *a, **k)
        seen.append(("load", mem.sampling, 0))

    monkeypatch.setattr(Bench, "run", run)
    monkeypatch.setattr(Bench, "__init__", init)
    args = cb.parse_args([str(tiny_pair.parent), "--frames", "90", "--steps", "3", "--beams", "1", "--batches", "1", "2",
                          "--threads", "1", "--warmup", "2", "--repeats", "2"])  # fmt: skip
    with PeakRss(interval_s=0.0005) as mem:
        cb.time_ours(tiny_pair, cb.features(args.frames), args, full=True, quiet=mem.paused)
        clocks: list[tuple[bool, int]] = []

        def clocked():  # sleeps, so that an unpaused sampler gets a core: ~40 samples in 20 ms
            before, sampling = mem.samples, mem.sampling
            deadline = time.monotonic() + (5 if sampling else 0.02)
            while time.monotonic() < deadline and mem.samples == before:
                time.sleep(0.001)
            clocks.append((sampling, mem.samples - before))

        cb.timed_median(clocked, warmup=2, repeats=3, quiet=mem.paused)
    assert seen[0] == ("load", False, 0)
    runs = [(sampling, n) for what, sampling, n in seen[1:]]
    assert len(runs) == 2 * 4  # beam 1 x 3 steps, batch 2: 2 warm-ups + 2 timed runs each
    for measure in (runs[:4], runs[4:]):
        assert [sampling for sampling, _ in measure] == [True, True, False, False]  # sampling in the warm-ups only
        assert [n for _, n in measure[2:]] == [0, 0]  # no sample taken during a timed run
    assert [sampling for sampling, _ in clocks] == [True, True, False, False, False]
    assert all(n > 0 for _, n in clocks[:2]) and [n for _, n in clocks[2:]] == [0, 0, 0]  # sampled in the warm-ups, never when timed
