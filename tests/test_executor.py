"""Executors: the eval set and audio files decoded locally or sharded over a local Ray cluster.

The Ray tests share one local cluster of 2 CPUs (no dashboard, a small object store) and
compare every hypothesis with the local executor's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stage_helpers import assert_one_line_failure, cli, tiny_recipe

from optimize.evaluate.suite import EvalSettings, Evaluator, load_data
from optimize.errors import OptimizeError
from optimize.recipe import EvaluationConfig
from optimize.runtime import executor
from optimize.runtime.search import DecodeConfig

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "artifacts" / "firered-aed-tiny"
EVAL = REPO / "calibration" / "eval" / "manifest.jsonl"
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: refused at once


def settings(executor_kind: str, workers: int = 0) -> EvalSettings:
    return EvalSettings("cpu", 1, DecodeConfig(), EvaluationConfig(executor=executor_kind, workers=workers))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the module, shut down after it."""
    pytest.importorskip("ray")
    ray, initialized = executor.connect(None, 2)
    yield ray
    if initialized:
        ray.shutdown()


@pytest.fixture(scope="module")
def eval_data():
    if not (MODEL / "encoder.onnx").is_file() or not EVAL.is_file():
        pytest.skip("the embedded default or its eval set is not in this checkout")
    return load_data(MODEL, EVAL, settings("local"))


@pytest.fixture(scope="module")
def wavs(eval_data):
    """Six files of the eval set."""
    return [Path(n) for n in eval_data.names[:6]]


def test_shards_hold_about_equal_audio():
    seconds = list(np.random.default_rng(0).uniform(0.5, 20.0, 101))
    plan = executor.shards(seconds, 8)
    assert sorted(b for s in plan for b in s) == list(range(101)) and len(plan) == 8
    totals = [sum(seconds[b] for b in s) for s in plan]
    assert max(totals) - min(totals) <= max(seconds)  # LPT: within one batch of each other
    assert executor.shard_count(seconds, 2) == max(8, int(np.ceil(sum(seconds) / executor.SHARD_AUDIO_S)))


@pytest.mark.parametrize("evaluation, fragment", [
    ({"executor": "rays"}, "evaluation.executor is 'rays'"),
    ({"workers": 2}, "evaluation.workers is 2 with executor local"),
    ({"executor": "ray", "mode": "parity_only"}, "executor ray with mode parity_only"),
])  # fmt: skip
def test_recipe_executor_keys_are_checked(tmp_path, evaluation, fragment):
    with pytest.raises(OptimizeError, match=fragment):
        EvaluationConfig(**evaluation)


def test_missing_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "eval.json"
    assert_one_line_failure(cli("eval", MODEL, "--data", EVAL, "--executor", "ray", "--json", out), "needs Ray", '.[ray]')
    assert not out.exists()


def test_unreachable_address_is_one_line_and_publishes_nothing(tmp_path):
    out = tmp_path / "eval.json"
    result = cli("eval", MODEL, "--data", EVAL, "--executor", "ray", "--ray-address", UNREACHABLE, "--json", out)
    assert_one_line_failure(result, f"ray cluster at {UNREACHABLE} is unreachable", "ray start --head")
    assert not out.exists()
    recipe = tiny_recipe(tmp_path / "r.yaml", MODEL, ["simplify"], tmp_path / "run", data=str(EVAL),
                         evaluation={"mode": "full", "executor": "ray", "probes": 2, "probe_steps": 6, "warmup": 0})  # fmt: skip
    assert_one_line_failure(cli("run", recipe, "--ray-address", UNREACHABLE), "unreachable")
    assert not (tmp_path / "run" / "final").exists()


def test_two_ray_workers_decode_the_eval_set_as_the_local_executor(ray_cluster, eval_data):
    """The CI check of the issue: the embedded default's whole eval set on 2 workers."""
    local = Evaluator(eval_data, settings("local"), None).evaluate(MODEL)
    assert local.failures == [] and local.throughput["executor"] == "local"
    seen: list = []

    class Bar:  # records what the terminal's progress bar would show
        def __init__(self, desc, total):
            seen.append([desc, total, 0, ""])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            seen[-1][2] += n

        def set_postfix_str(self, s):
            seen[-1][3] = s

    evaluator = Evaluator(eval_data, settings("ray", workers=2), None)
    evaluator.baseline = local
    ray_metrics = evaluator.evaluate(MODEL, progress=Bar)
    assert ray_metrics.failures == []
    assert ray_metrics.hyps == local.hyps and len(local.hyps) == len(eval_data.feats)
    assert ray_metrics.error_rates == local.error_rates and ray_metrics.error_rate == local.error_rate
    assert ray_metrics.token_agreement == 1.0 and ray_metrics.error_rate_vs_baseline == 0.0
    tp = ray_metrics.throughput
    assert tp["executor"] == "ray" and tp["workers"] == 2 and tp["shards"] >= 8
    assert abs(tp["audio_seconds"] - local.throughput["audio_seconds"]) < 1e-6
    assert "per worker" in ray_metrics.rtf["timed"] and ray_metrics.rtf["items"] == local.rtf["items"]
    desc, total, done, postfix = next(s for s in seen if s[0].startswith("ray "))
    assert total == done == tp["shards"] and "audio h, ETA" in postfix


def test_run_report_is_the_same_on_ray(ray_cluster, tmp_path, eval_data):
    """`optimize run` with evaluation.executor ray, a process per stage and evaluation as users run it:
    each evaluation's process joins the cluster the run joined, and the report equals a local run's."""
    manifest = tmp_path / "manifest.jsonl"
    lines = EVAL.read_text().splitlines()[:3]
    manifest.write_text("".join(json.dumps(json.loads(s) | {"audio": str(EVAL.parent / json.loads(s)["audio"])}) + "\n" for s in lines))
    rows = {}
    for kind in ("local", "ray"):
        recipe = tiny_recipe(tmp_path / f"{kind}.yaml", MODEL, ["simplify"], tmp_path / kind, data=str(manifest), decode={"beam_size": 3},
                             evaluation={"mode": "full", "executor": kind, "probes": 2, "probe_steps": 6, "warmup": 1}
                             | ({"workers": 1} if kind == "ray" else {}))  # fmt: skip
        result = cli("run", recipe, isolate=kind == "ray")  # ray: each evaluation's own process joins the run's cluster
        assert result.exit_code == 0, result.stderr
        report = json.loads((tmp_path / kind / "report.json").read_text())
        assert ("per worker" in report["rtf_timed"]) == (kind == "ray")  # the report says whose clock its RTF is
        rows[kind] = report["stages"]
    same = ("name", "error_rate", "delta_error_rate", "error_rate_vs_baseline", "token_agreement", "passed", "failures", "size_mb", "op_stats")
    assert [{k: r[k] for k in same} for r in rows["ray"]] == [{k: r[k] for k in same} for r in rows["local"]]
    for kind in ("local", "ray"):
        hyps = [json.loads((tmp_path / kind / d / "stage.json").read_text())["evaluation"]["metrics"]["hyps"] for d in ("0-baseline", "1-simplify")]
        rows[kind] = hyps
    assert rows["ray"] == rows["local"]


def test_transcribe_on_ray_prints_what_the_local_executor_prints(ray_cluster, wavs):
    local = cli("transcribe", MODEL, *wavs)
    ray = cli("transcribe", MODEL, *wavs, "--executor", "ray", "--workers", "2")
    assert local.exit_code == 0 and ray.exit_code == 0, ray.stderr
    assert ray.stdout == local.stdout and len(ray.stdout.splitlines()) == len(wavs)


def test_pair_workers_cannot_read_is_one_line_and_prints_nothing(ray_cluster, wavs, tmp_path):
    result = cli("transcribe", tmp_path / "not-on-the-workers", *wavs, "--executor", "ray", "--workers", "1")
    assert_one_line_failure(result, "ray worker on", "cannot load the pair", "not-on-the-workers", "every node mounts")
    assert result.stdout == ""


def test_shard_failing_twice_names_the_utterance(ray_cluster, wavs, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(300, dtype=np.int16), 16000)  # under one 25 ms fbank frame
    result = cli("transcribe", MODEL, *wavs[:2], short, "--executor", "ray", "--workers", "2")
    assert_one_line_failure(result, f"failed {executor.ATTEMPTS} times", f"utterance {short}")
    assert result.stdout == ""


def test_dead_worker_is_restarted_by_ray_and_its_shard_retried(ray_cluster, wavs, tmp_path):
    """A worker process that exits mid-shard: Ray restarts the actor (the pair loads again) and
    retries the shard; the hypotheses equal the local executor's."""
    marker = str(tmp_path / "died")

    class DiesOnce(os.PathLike):  # defined here, so cloudpickle ships it by value to the worker
        def __init__(self, path: str):
            self.path = path

        def __fspath__(self) -> str:  # load_audio opens the path: the first worker to do so exits
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return self.path

    names = [str(w) for w in wavs[:3]]
    work = executor.Work(((DiesOnce(names[0]),), (names[1],), (names[2],)), tuple((n,) for n in names), (1.0, 1.0, 1.0))
    decoder = executor.Decoder(MODEL, DecodeConfig(), "cpu", 1)
    out = executor.decode(decoder, work, 0, "test", "ray", workers=1)
    assert os.path.exists(marker)  # the worker did die
    local = executor.decode(decoder, executor.Work(tuple((n,) for n in names), work.names, work.seconds), 0, "test")
    assert [[h.tokens for h in b] for b in out.hyps] == [[h.tokens for h in b] for b in local.hyps]
