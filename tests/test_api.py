"""The top-level Python API: the README example runs, and float / int arrays give the same text."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from optimize.errors import OptimizeError
from optimize.runtime.audio import from_array, load_audio

REPO = Path(__file__).resolve().parents[1]
MODEL, AUDIO = REPO / "artifacts" / "firered-aed-tiny", REPO / "calibration" / "eval" / "audio"

needs_model = pytest.mark.skipif(not (MODEL / "encoder.onnx").is_file(), reason="the embedded default model is not in this checkout")


def readme_python() -> str:
    """The README's Python API example, verbatim."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@needs_model
def test_readme_example_runs_as_written():
    proc = subprocess.run([sys.executable, "-c", readme_python()], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1] == "HOW FAR IS IT TO SEATTLE"  # file and float array: same text
    assert len(lines) == 4 and all(line.endswith(": HOW FAR IS IT TO SEATTLE") for line in lines[2:])  # two VAD segments
    first, second = (tuple(float(t) for t in line.split(" s:")[0].split("-")) for line in lines[2:])
    assert first[1] <= second[0]  # in time order, not overlapping


def test_import_is_light_and_names_resolve():
    code = "import sys, optimize; assert 'onnxruntime' not in sys.modules and 'torch' not in sys.modules; print(optimize.Recognizer.__name__, optimize.run.__name__, optimize.evaluate_pair.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["Recognizer", "run", "evaluate_pair"], proc.stderr
    import optimize

    with pytest.raises(AttributeError):
        optimize.no_such_name  # noqa: B018


@needs_model
def test_float_and_int_arrays_give_identical_text():
    from optimize import DecodeConfig, Recognizer

    rec = Recognizer(MODEL, DecodeConfig(beam_size=3))
    files = [AUDIO / f"eval-{i:06d}.ogg" for i in range(6)]
    want = rec.transcribe(files)
    for f, hyp in zip(files, want):
        as_int16, rate = sf.read(f, dtype="int16")
        as_float, _ = sf.read(f, dtype="float32")
        got = rec.transcribe([as_int16, as_float, as_float.astype(np.float64), as_int16.astype(np.int32) << 16], sample_rate=rate)
        assert {(h.tokens, h.text) for h in got} == {(hyp.tokens, hyp.text)}
    assert len({h.text for h in want}) == len(files)  # the comparison is between real, distinct transcripts


def test_from_array_scales_exactly_and_resamples():
    x = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    assert np.array_equal(from_array(x, 16000), x.astype(np.float32))
    assert np.array_equal(from_array(x / 32768.0, 16000), x.astype(np.float32))  # float in [-1, 1]: exact
    stereo = np.stack([x, x], axis=1)
    assert np.array_equal(from_array(stereo, 16000), x.astype(np.float32))
    tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype(np.float32) * 0.5
    assert len(from_array(tone, 8000)) == 16000


def test_from_array_matches_reading_the_file(tmp_path):
    samples = (np.random.default_rng(0).standard_normal(24000) * 3000).astype(np.int16)
    sf.write(tmp_path / "x.wav", samples, 24000, subtype="PCM_16")
    assert np.allclose(from_array(samples, 24000), load_audio(tmp_path / "x.wav"), atol=1e-3)


@pytest.mark.parametrize(
    "array, rate, message",
    [
        (np.full(1600, 300.0, dtype=np.float32), 16000, "float audio must lie in [-1, 1]; this array peaks at 300"),
        (np.zeros(1600, dtype=np.uint8), 16000, "dtype uint8"),
        (np.zeros((2, 2, 2), dtype=np.float32), 16000, "shape (2, 2, 2)"),
        (np.zeros(1600, dtype=np.float32), 0, "sample rate 0"),
    ],
)
def test_from_array_refuses_what_it_cannot_read_in_one_line(array, rate, message):
    with pytest.raises(OptimizeError) as e:
        from_array(array, rate)
    assert message in str(e.value) and "\n" not in str(e.value)


@needs_model
def test_an_array_without_its_sample_rate_is_refused():
    from optimize import Recognizer

    with pytest.raises(OptimizeError, match="without its sample rate"):
        Recognizer(MODEL).transcribe([np.zeros(16000, dtype=np.float32)])
