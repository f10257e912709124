"""Every command in the README's bash blocks runs as written here, or is listed with where it runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Commands this test runs verbatim, in a directory that links the repository's artifacts/ and calibration/.
RUN_HERE = (
    "optimize transcribe artifacts/firered-aed-tiny calibration/eval/audio/eval-000000.ogg --beam-size 3",
    "optimize transcribe artifacts/firered-aed-tiny calibration/calib --format jsonl > hyps.jsonl",
)
# Commands run elsewhere, or that cannot run in CI, with where and why.
ELSEWHERE = {
    "pip install -e . && optimize run recipes/cpu_int8.yaml": "tests/test_pipeline.py::test_shipped_recipe_passes_on_the_embedded_default runs the recipe unchanged (its run directory in tmp)",
    "apt-get update -qq && apt-get install": ".ci/run runs the README's test line verbatim",
    "pip install torch==2.13.0 && pip install -e \".[export]\"": "the install .ci/run's test line covers (torch 2.13.0 and the test extra)",
    "optimize export path/to/": "needs an official checkpoint; tests/test_export.py runs `optimize export` on official-format random checkpoints",
    "optimize run recipes/cpu_int8.yaml --model ": "needs published or official files (not downloadable here); tests/test_stage_reexport.py runs the recipe's path on published-style pairs",
    "optimize eval sherpa-onnx-fire-red-asr": "needs the published files; tests/test_stage_reexport.py runs `optimize eval` on a published-style int8 pair under the published names",
    "optimize transcribe sherpa-onnx-fire-red-asr": "needs the published files; tests/test_stage_reexport.py runs `optimize transcribe` on a published-style int8 pair under the published names",
    "pip install -e \".[ray]\"": "the optional Ray extra; tests/test_executor.py runs where it is installed",
    "optimize eval artifacts/firered-aed-tiny --data calibration/eval --executor ray": "tests/test_executor.py (needs the ray extra)",
    "optimize transcribe artifacts/firered-aed-tiny calibration/eval/audio/*.ogg --executor ray": "tests/test_executor.py (needs the ray extra)",
    "optimize run recipes/cpu_int8.yaml --executor ray --ray-address": "needs a running Ray cluster",
    "python benchmarks/make_aed_l.py work/aed_l": "AED-L size (~6 min, < 10 GB): BENCHMARKS.md 5.1; too large for CI",
    "optimize run recipes/cpu_int8_aed_l.yaml": "needs make_aed_l.py's output: BENCHMARKS.md 5.2; tests/test_recipe.py loads the recipe",
    "python benchmarks/cpu_benchmark.py work/aed_l": "AED-L size: BENCHMARKS.md 5.3",
    "pip install -e . && pip uninstall -y onnxruntime && pip install \"onnxruntime-gpu": "replaces the CPU package; BENCHMARKS.md 4 records the run",
    "optimize run recipes/gpu_fp16.yaml": "targets CUDA (no GPU in CI); test_shipped_recipe_passes_on_the_embedded_default runs it with --provider cpu",
    "optimize run recipes/gpu_fp16_aed_l.yaml": "CUDA and AED-L size: BENCHMARKS.md 5.4 (--provider cpu)",
    "python benchmarks/gpu_benchmark.py --device cuda": "needs a GPU",
}


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks: continuation lines joined, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith("#"):
                out.append(" ".join(command.split()))
    return out


def test_every_readme_command_is_run_or_accounted_for():
    unknown = [c for c in readme_commands() if c not in RUN_HERE and not any(c.startswith(k) for k in ELSEWHERE)]
    assert not unknown, f"README commands neither run by a test nor listed in ELSEWHERE: {unknown}"
    assert all(c in readme_commands() for c in RUN_HERE)  # the README still says what this test runs


@pytest.mark.skipif(not (REPO / "artifacts" / "firered-aed-tiny" / "encoder.onnx").is_file(), reason="the embedded default model is not in this checkout")
def test_readme_transcribe_commands_run_as_written(tmp_path):
    for name in ("artifacts", "calibration"):
        (tmp_path / name).symlink_to(REPO / name)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = subprocess.run(["bash", "-c", RUN_HERE[0]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("calibration/eval/audio/eval-000000.ogg\t") and "RTF" in first.stderr
    second = subprocess.run(["bash", "-c", RUN_HERE[1]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for line in (tmp_path / "hyps.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 32 and all(r["id"].startswith("calib-") and r["segments"] for r in records)
