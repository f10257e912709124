"""The runner end to end: stages, checks, gates, cache, resume, reports, publishing, `optimize eval`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from stage_helpers import assert_one_line_failure, cli, cuda_starts, outside_contract_pair, tiny_recipe, truncated_pair

from optimize import cache

REPO = Path(__file__).resolve().parents[1]
STAGES = ["simplify", "fuse", "int8"]
ROW_KEYS = {"name", "path", "error_rate", "delta_error_rate", "token_agreement", "rtf", "speedup", "size_mb", "passed", "failures", "peak_rss_mb", "eval_peak_rss_mb"}
# `optimize run` in a fresh interpreter, failing if anything imported torch.
RUN_WITHOUT_TORCH = (
    "import sys\nfrom optimize.cli import app\nsys.argv = ['optimize', 'run', *sys.argv[1:]]\n"
    "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
    "assert 'torch' not in sys.modules, 'optimize run imported torch'\nsys.exit(code)\n"
)


@pytest.fixture(scope="module")
def e2e(tiny_pair, tmp_path_factory):
    """One uninterrupted run of simplify -> fuse -> int8 in a subprocess."""
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = tiny_recipe(tmp / "tiny_int8.yaml", tiny_pair, STAGES, tmp / "run")
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_TORCH, str(recipe)], capture_output=True, text=True, timeout=600)
    return recipe, tmp / "run", proc


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def test_run_end_to_end_without_torch(e2e):
    _, run_dir, proc = e2e
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout and proc.stdout.count("yes") == 4
    rep = report(run_dir)
    assert {"recipe", "model", "data", "provider", "threads", "stages"} <= set(rep)
    assert rep["passed"] and [r["name"] for r in rep["stages"]] == ["baseline", *STAGES]
    for row in rep["stages"]:
        assert ROW_KEYS <= set(row) and row["passed"] and row["failures"] == []
        assert row["rtf"] > 0 and row["speedup"] > 0 and row["size_mb"] > 0
        assert cache.read_record(row["path"])["outputs"] == row["outputs"]
    assert all(r["peak_rss_mb"] > 50 for r in rep["stages"][1:])  # measured in each stage's own process
    assert all(r["eval_peak_rss_mb"] > 50 for r in rep["stages"])  # and each evaluation in its own
    int8 = rep["stages"][-1]
    assert int8["op_stats"]["MatMulInteger"] > 0 and int8["size_mb"] < rep["stages"][0]["size_mb"] / 1.5
    assert int8["parity"]["vs_baseline"]["teacher_forced_cosine"] > 0.999


def test_reports_and_final_pair(e2e):
    _, run_dir, _ = e2e
    md = (run_dir / "report.md").read_text()
    separators = [line for line in md.splitlines() if line.startswith("|---")]
    assert len(separators) == 1 and md.count("\n| int8 ") == 1  # one table, a row per stage
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = run_dir / "final"
    assert sorted(p.name for p in final.iterdir()) == ["decoder.onnx", "encoder.onnx", "tokens.txt"]
    assert cache.digests(final) == report(run_dir)["stages"][-1]["outputs"]
    assert not list(run_dir.glob("*.tmp"))


def test_final_pair_loads_in_sherpa_onnx(e2e, tmp_path):
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    import soundfile as sf

    final = e2e[1] / "final"
    recognizer = sherpa_onnx.OfflineRecognizer.from_fire_red_asr(
        encoder=str(final / "encoder.onnx"), decoder=str(final / "decoder.onnx"), tokens=str(final / "tokens.txt"), num_threads=1
    )
    samples = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    stream = recognizer.create_stream()
    stream.accept_waveform(16000, samples)
    recognizer.decode_stream(stream)
    sf.write(tmp_path / "x.wav", samples, 16000)  # and the same pair transcribes through our CLI, to the same text
    result = cli("transcribe", final, tmp_path / "x.wav", "--beam-size", "1")
    assert result.exit_code == 0, result.stderr
    ours, theirs = result.stdout.rstrip("\n").split("\t", 1)[1], stream.result.text
    # random weights never emit eos, so each stops at its own step limit: the shorter is a prefix of the longer
    assert theirs and ours and (ours.startswith(theirs) or theirs.startswith(ours)), (ours, theirs)


def test_rerun_uses_the_cache_and_force_redoes(e2e):
    recipe, run_dir, _ = e2e
    before = [r["outputs"] for r in report(run_dir)["stages"]]
    result = cli("run", recipe)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count(": cached") == 4 and ": running" not in result.stderr
    forced = cli("run", recipe, "--force")
    assert forced.exit_code == 0 and forced.stderr.count(": running") == 4
    assert [r["outputs"] for r in report(run_dir)["stages"]] == before  # stages are deterministic


def test_logits_cosine_gate_stops_the_run(e2e, tiny_pair, tmp_path):
    # the gate parity_only runs rely on: int8 logits are close to fp32 but not equal
    cosine = report(e2e[1])["stages"][-1]["parity"]["vs_baseline"]["teacher_forced_cosine"]
    assert 0.99 < cosine < 1.0
    gates = {"max_error_rate_increase": 0.5, "min_token_agreement": 0.0, "min_speedup": 0.01}
    recipe = tiny_recipe(tmp_path / "strict.yaml", tiny_pair, STAGES, tmp_path / "run", gates=gates | {"min_logits_cosine": 1.0})
    result = cli("run", recipe)
    assert result.exit_code == 1  # a gate failed, as opposed to 2 for bad input
    assert "teacher-forced logits cosine" in result.stderr and "below min_logits_cosine 1.0" in result.stderr
    assert not (tmp_path / "run" / "final").exists()
    assert not report(tmp_path / "run")["passed"]
    # the same run directory with a looser gate: the stage kept for inspection (and its evaluation)
    # comes from the cache (gates are not part of a cache key), is judged again, and now passes
    failed = next(r["name"] for r in report(tmp_path / "run")["stages"] if not r["passed"])
    recipe = tiny_recipe(tmp_path / "loose.yaml", tiny_pair, STAGES, tmp_path / "run", gates=gates | {"min_logits_cosine": 0.99})
    result = cli("run", recipe)
    assert result.exit_code == 0, result.stderr
    assert f"-{failed}: cached\n" in result.stderr and f"-{failed}: passed" in result.stderr
    assert report(tmp_path / "run")["passed"] and (tmp_path / "run" / "final").is_dir()


def test_killed_run_resumes_from_cache_with_same_hashes(e2e, tiny_pair, tmp_path):
    recipe = tiny_recipe(tmp_path / "kill.yaml", tiny_pair, STAGES, tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "optimize.cli", "run", str(recipe)], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if line.startswith("2-fuse: running"):
                os.killpg(proc.pid, signal.SIGKILL)  # mid-stage: the fuse child is working
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "2-fuse" / cache.RECORD).exists()
    result = cli("run", recipe)
    assert result.exit_code == 0, result.stderr
    assert "0-baseline: cached" in result.stderr and "1-simplify: cached" in result.stderr and "2-fuse: running" in result.stderr
    assert [r["outputs"] for r in report(tmp_path / "run")["stages"]] == [r["outputs"] for r in report(e2e[1])["stages"]]


def test_gpu_recipe_without_cuda_says_so_then_runs_on_cpu_when_asked(tiny_pair, tmp_path):
    """Without a CUDA EP, or with one that does not start (onnxruntime-gpu without its libraries or a device)."""
    if cuda_starts():
        pytest.skip("this machine has CUDA: the no-CUDA message cannot be shown")
    recipe = tiny_recipe(tmp_path / "gpu.yaml", tiny_pair, ["simplify", "fuse", "fp16"], tmp_path / "run", provider="cuda",
                         gates={"max_error_rate_increase": 0.1, "min_token_agreement": 0.99, "min_speedup": 1000})  # fmt: skip
    assert_one_line_failure(cli("run", recipe), "targets cuda", "--provider cpu")
    assert not (tmp_path / "run" / "final").exists()
    result = cli("run", recipe, "--provider", "cpu")  # min_speedup 1000 is not judged off the target
    assert result.exit_code == 0, result.stderr
    assert "RTF not representative" in result.stdout
    rep = report(tmp_path / "run")
    assert rep["provider"] == "cpu" and rep["target_provider"] == "cuda" and not rep["rtf_representative"]
    assert rep["stages"][-1]["token_agreement"] >= 0.99


def test_cuda_ep_that_does_not_start_stops_the_run_before_any_stage(tiny_pair, tmp_path, monkeypatch):
    from optimize.runtime import providers

    if cuda_starts():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(providers, "cuda_available", lambda: True)  # as onnxruntime-gpu lists it, usable or not
    recipe = tiny_recipe(tmp_path / "gpu.yaml", tiny_pair, ["fp16"], tmp_path / "run", provider="cuda")
    assert_one_line_failure(cli("run", recipe), "recipe gpu targets cuda but", "CUDAExecutionProvider", "--provider cpu")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def manifest(tmp_path_factory):
    """The four shortest utterances of the committed eval set, for the full (error-rate) evaluation.

    Cheap, so per test: its tests need not share a worker with the e2e group under xdist."""
    src = REPO / "calibration" / "eval" / "manifest.jsonl"
    if not src.is_file():
        pytest.skip("calibration/eval is not in this checkout")
    out = tmp_path_factory.mktemp("manifest") / "manifest.jsonl"
    lines = sorted((json.loads(line) for line in src.read_text().splitlines()), key=lambda d: d["duration"])[:4]
    out.write_text("".join(json.dumps(d | {"audio": str(src.parent / d["audio"])}) + "\n" for d in lines))
    return out


def test_full_evaluation_reports_error_rates(tiny_pair, manifest, tmp_path):
    recipe = tiny_recipe(tmp_path / "full.yaml", tiny_pair, ["simplify"], tmp_path / "run", data=str(manifest),
                         evaluation={"mode": "full", "probes": 2, "probe_steps": 6, "warmup": 1})  # fmt: skip
    result = cli("run", recipe)
    assert result.exit_code == 0, result.stderr
    base, simplified = report(tmp_path / "run")["stages"]
    assert base["error_rate"] is not None and simplified["delta_error_rate"] == 0.0
    assert simplified["token_agreement"] == 1.0 and simplified["error_rate_vs_baseline"] == 0.0
    record = cache.read_record(tmp_path / "run" / "1-simplify")["evaluation"]["metrics"]
    assert len(record["hyps"]) == 4 and record["rtf"]["items"] == 4 and "excludes audio loading" in record["rtf"]["timed"]

    out = tmp_path / "eval.json"
    result = cli("eval", tmp_path / "run" / "final", "--recipe", recipe, "--reference", tmp_path / "run" / "0-baseline", "--json", out)
    assert result.exit_code == 0, result.stderr
    assert "token agreement 1.000" in result.stdout
    assert json.loads(out.read_text())["metrics"]["error_rate"] == simplified["error_rate"]


def test_provider_options_io_binding_decodes_the_same(manifest, tmp_path):
    """A recipe's provider_options reach the evaluation: io_binding on the CPU provider decodes
    the embedded model through the bound path (beam 3, padded batches of 2) with the same tokens."""
    model = REPO / "artifacts" / "firered-aed-tiny"
    results = {}
    for bound in (False, True):
        recipe = tiny_recipe(tmp_path / f"r{bound}.yaml", model, ["simplify"], tmp_path / "run", data=str(manifest),
                             decode={"beam_size": 3, "batch_size": 2}, provider_options={"io_binding": bound},
                             evaluation={"mode": "full", "probes": 2, "probe_steps": 6, "warmup": 0})  # fmt: skip
        out = tmp_path / f"eval{bound}.json"
        result = cli("eval", model, "--recipe", recipe, "--json", out)
        assert result.exit_code == 0, result.stderr
        results[bound] = json.loads(out.read_text())["metrics"]
    assert results[True]["io_binding"] is True and results[False]["io_binding"] is False
    assert ("with IOBinding" in results[True]["rtf"]["timed"]) and ("IOBinding" not in results[False]["rtf"]["timed"])
    assert [h["tokens"] for h in results[True]["hyps"]] == [h["tokens"] for h in results[False]["hyps"]]
    assert results[True]["error_rate"] == results[False]["error_rate"]


def test_unmeetable_gate_stops_the_run_and_keeps_the_stage_for_inspection(tiny_pair, tmp_path):
    """The runner judges every stage alike: a gate miss after the stage is one error line, the stage's
    pair stays (intact, loadable) for inspection, and nothing is published. One stage stands for all."""
    from stage_helpers import assert_contract_kept

    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, ["simplify"], tmp_path / "run",
                         gates={"max_error_rate_increase": 0.5, "min_token_agreement": 0.0, "min_speedup": 1000})  # fmt: skip
    assert_one_line_failure(cli("run", recipe), "stage simplify failed", "min_speedup 1000", code=1)  # 1: a gate failed
    assert not (tmp_path / "run" / "final").exists()
    assert_contract_kept(tiny_pair, tmp_path / "run" / "1-simplify")
    rows = report(tmp_path / "run")["stages"]
    assert [r["passed"] for r in rows] == [True, False]
    assert rows[1]["failures"] == [f for f in rows[1]["failures"] if f.startswith("gate: speedup")] != []


@pytest.mark.parametrize("broken", [truncated_pair, outside_contract_pair])
def test_broken_input_pair_fails_in_one_line(tiny_pair, tmp_path, broken):
    src = broken(tiny_pair, tmp_path / "broken")
    recipe = tiny_recipe(tmp_path / "r.yaml", src, STAGES, tmp_path / "run")
    assert_one_line_failure(cli("run", recipe), "stage baseline failed")
    assert not (tmp_path / "run" / "final").exists()
    assert report(tmp_path / "run")["stages"][0]["passed"] is False


def test_recipe_errors_are_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"stages": ["int8"], "gates": {"max_error_rate_increase": 1, "min_token_agreement": 0, "min_speedupp": 1}}))
    assert_one_line_failure(cli("run", recipe), "unknown key 'min_speedupp'", "did you mean 'min_speedup'?")


def external_data_pair(pair: Path, dst: Path, monkeypatch) -> Path:
    """`pair` re-saved with one `.data` file per graph: the >2 GB layout, with the size limit lowered (for the test's duration)."""
    import shutil

    import onnx

    from optimize import graph

    monkeypatch.setattr(graph, "PROTO_LIMIT_BYTES", 1000)
    dst.mkdir()
    for f in ("encoder.onnx", "decoder.onnx"):
        graph.save(onnx.load(str(pair / f)), dst / f)
    shutil.copyfile(pair / "tokens.txt", dst / "tokens.txt")
    return dst


@pytest.mark.parametrize("name", ["simplify", "fuse", "fp16", "int8"])
def test_stages_write_external_data_by_size(tiny_pair, tmp_path, monkeypatch, name):
    """With the size limit lowered, every stage reads and writes one `.data` file per graph (the >2 GB path)."""
    from stage_helpers import assert_contract_kept, probe_parity

    from optimize.stages import load_stage

    src = external_data_pair(tiny_pair, tmp_path / "src", monkeypatch)
    assert (src / "encoder.onnx.data").is_file()
    stage = load_stage(name)
    stage.run(src, tmp_path / "out", stage.Config())
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "decoder.onnx.data", "encoder.onnx", "encoder.onnx.data", "tokens.txt"]
    assert (out / "encoder.onnx").stat().st_size < 200_000  # the weights are in the .data file
    assert_contract_kept(tiny_pair, out)
    assert probe_parity(tiny_pair, out, probes=1).teacher_forced_cosine > 0.999
    assert set(cache.digests(out)) == {"encoder.onnx", "encoder.onnx.data", "decoder.onnx", "decoder.onnx.data", "tokens.txt"}


def test_hard_linked_external_data_is_refused_in_one_line(tiny_pair, tmp_path, monkeypatch):
    from optimize.errors import OptimizeError
    from optimize.stages import load_stage

    src = external_data_pair(tiny_pair, tmp_path / "src", monkeypatch)
    os.link(src / "decoder.onnx.data", tmp_path / "linked.data")  # as `cp -al` leaves it
    stage = load_stage("simplify")
    with pytest.raises(OptimizeError, match=r"decoder.onnx.data has 2 hard links.*cp -r"):
        stage.run(src, tmp_path / "out", stage.Config())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, extra, max_loss, min_identical", [("cpu_int8", [], 0.5, 0.97), ("gpu_fp16", ["--provider", "cpu"], 0.1, 0.99)])
def test_shipped_recipe_passes_on_the_embedded_default(tmp_path, monkeypatch, name, extra, max_loss, min_identical):
    """The README's main job: each shipped recipe, unchanged, on artifacts/firered-aed-tiny and calibration/eval."""
    if not (REPO / "artifacts" / "firered-aed-tiny" / "encoder.onnx").is_file():
        pytest.skip("the embedded default model is not in this checkout")
    monkeypatch.chdir(REPO)  # the recipes name repo-relative paths
    result = cli("run", f"recipes/{name}.yaml", "--output", tmp_path / name, *extra)
    assert result.exit_code == 0, result.stderr
    rows = report(tmp_path / name)["stages"]
    last = rows[-1]
    assert last["delta_error_rate"] <= max_loss and last["token_agreement"] >= min_identical
    assert rows[0]["error_rate"] < 50  # a trained model, not noise
