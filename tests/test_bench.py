"""`optimize bench`: one pair's encoder and decoder steps timed through the recognizer's decode path."""

from __future__ import annotations

import json

import pytest
from stage_helpers import cli

from optimize.errors import OptimizeError
from optimize.evaluate.bench import BenchConfig, bench


def test_bench_times_the_requested_shape_on_both_paths(tiny_pair, tiny_pair_v1):
    cfg = BenchConfig(frames=120, steps=5, batch=2, beam=2, threads=1, warmup=0, repeats=1)
    plain, bound = bench(tiny_pair, cfg), bench(tiny_pair, BenchConfig(**{**cfg.__dict__, "io_binding": True}))
    for r in (plain, bound):
        assert r.rows == 4 and r.steps == 5 and r.encoder_ms > 0 and r.decoder_ms_per_step > 0
        assert r.total_ms == pytest.approx(r.encoder_ms + r.decoder_ms_per_step * 5, rel=1e-6)
        assert r.rtf == pytest.approx(r.total_ms / 1e3 / (2 * 120 * 0.01))
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
