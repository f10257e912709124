"""The command line surface: transcribe's inputs and formats, exit codes, --version, -q/-v, help text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stage_helpers import cli
from typer.testing import CliRunner

from optimize import __version__
from optimize.cli import app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(3)
    out = []
    for i, seconds in enumerate([0.9, 0.5]):
        out.append(tmp / f"u{i}.wav")
        sf.write(out[-1], rng.normal(0, 3000, int(16000 * seconds)).astype(np.int16), 16000, subtype="PCM_16")
    return out


def run(*args, stdin: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"optimize {__version__}"


def test_formats_carry_ids_tokens_scores_and_durations(tiny_pair, wavs):
    common = ["transcribe", tiny_pair, *wavs, "--beam-size", "1", "--threads", "1"]
    tsv, text, jsonl, doc = (run(*common, "-f", f) for f in ("tsv", "text", "jsonl", "json"))
    for r in (tsv, text, jsonl, doc):
        assert r.exit_code == 0, r.stderr
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert records == json.loads(doc.stdout)["results"]
    assert [r["id"] for r in records] == [str(w) for w in wavs]
    assert tsv.stdout.splitlines() == [f"{r['id']}\t{r['text']}" for r in records]
    assert text.stdout.splitlines() == [r["text"] for r in records]
    for r, w in zip(records, wavs):
        assert r["duration"] == pytest.approx(sf.info(str(w)).duration, abs=1e-3)
        (seg,) = r["segments"]  # short audio: one segment, the whole file
        assert (seg["start"], seg["end"]) == (0.0, r["duration"])
        assert len(seg["tokens"]) == len(seg["token_ids"]) and seg["score"] <= 0


def test_summary_on_stderr_and_quiet(tiny_pair, wavs):
    result = run("transcribe", tiny_pair, wavs[0], "--beam-size", "1")
    assert "1 input(s)" in result.stderr and "RTF" in result.stderr
    quiet = run("-q", "transcribe", tiny_pair, wavs[0], "--beam-size", "1")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == result.stdout


def test_inputs_directory_manifest_wav_scp_and_stdin(tiny_pair, wavs, tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    for w in wavs:
        shutil.copy(w, folder / w.name)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": f"utt{i}", "audio": f"audio/{w.name}"}) + "\n" for i, w in enumerate(wavs)))
    (tmp_path / "wav.scp").write_text("".join(f"k{i} audio/{w.name}\n" for i, w in enumerate(wavs)))
    common = ["--beam-size", "1", "-f", "jsonl"]
    ids = lambda r: [json.loads(line)["id"] for line in r.stdout.splitlines()]  # noqa: E731
    texts = lambda r: [json.loads(line)["text"] for line in r.stdout.splitlines()]  # noqa: E731
    by_dir = run("transcribe", tiny_pair, folder, *common)
    by_manifest = run("transcribe", tiny_pair, tmp_path / "m.jsonl", *common)
    by_scp = run("transcribe", tiny_pair, tmp_path / "wav.scp", *common)
    by_stdin = run("transcribe", tiny_pair, "-", *common, stdin="".join(f"{w}\n" for w in wavs))
    assert ids(by_dir) == [str(folder / w.name) for w in wavs]
    assert ids(by_manifest) == ["utt0", "utt1"] and ids(by_scp) == ["k0", "k1"] and ids(by_stdin) == [str(w) for w in wavs]
    assert texts(by_dir) == texts(by_manifest) == texts(by_scp) == texts(by_stdin)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["transcribe", "{pair}", "missing.wav"], "missing.wav does not exist"),
        (["transcribe", "{pair}", "{wav}", "-f", "xml"], "--format 'xml'"),
        (["transcribe", "{pair}", "{wav}", "--max-segment", "90"], "max_segment 90"),
        (["transcribe", "{pair}", "{wav}", "--no-such-flag"], "No such option"),
        (["-q", "-v", "transcribe", "{pair}", "{wav}"], "contradict"),
        (["run", "no_such_recipe.yaml"], "cannot read recipe"),
    ],
)
def test_usage_and_input_errors_exit_2(tiny_pair, wavs, args, fragment):
    result = run(*[a.format(pair=tiny_pair, wav=wavs[0]) for a in args])
    assert result.exit_code == 2 and fragment in result.stderr, (result.exit_code, result.stderr)


def test_help_shows_real_defaults():
    for command in ("transcribe", "run", "eval", "bench"):
        text = run(command, "--help").stdout
        assert "Config]" not in text and "DecodeConfig" not in text and "default: Recognizer" not in text and "<bool>" not in text
    text = run("transcribe", "--help").stdout
    assert "[default: 3]" in " ".join(text.split()) and "[default: tsv]" in text and "[default: 60]" in " ".join(text.split())
    text = " ".join(run("bench", "--help").stdout.split())
    assert "[default: 1000]" in text and "[default: 32]" in text


def test_run_resolves_recipe_paths_against_the_recipe_file(tmp_path, monkeypatch):
    from optimize.recipe import load_recipe

    monkeypatch.chdir(tmp_path)  # anywhere but the repository
    recipe = load_recipe(REPO / "recipes" / "cpu_int8.yaml")
    assert recipe.model == REPO / "artifacts" / "firered-aed-tiny" and recipe.data == REPO / "calibration" / "eval"
    assert recipe.output == Path("runs/cpu_int8")  # the default run directory stays relative to where you run
    assert cli("run", REPO / "recipes" / "cpu_int8.yaml", "--model", tmp_path / "nope").exit_code == 2  # CLI paths: the cwd
