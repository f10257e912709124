"""The fault catalogue: bad input and unlucky environments, as a careless or unlucky user meets them.

Every case asserts the exit code, one `error: <problem> (<fix>)` line without a traceback,
the sha256 of every input unchanged, and nothing published or left half-written. Most
cases call the CLI in this process and fail before any model work; the few that need
real processes (two runs on one directory, kill -9, Ctrl-C, a file-size limit) spawn them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import yaml
from stage_helpers import cli, copy_pair, tiny_recipe

from optimize.errors import OptimizeError

REPO = Path(__file__).resolve().parents[1]
SR = 16000
# stderr lines a run may print before its error: progress, never a traceback
LOG_LINE = re.compile(r"^(\d+-\w+: (running|cached|passed)|note: .*)$")
# what a half-written output looks like
PARTIAL = re.compile(r"(\.tmp($|\.|-)|\.old$|-inferred\.onnx$|^\.input-)")
WAIT_S = 120  # upper bound for a subprocess to reach a state (never a timing assertion)


# ---- assertions ------------------------------------------------------------------------------


def digest_tree(*paths: Path) -> dict[str, str]:
    """sha256 of every file under `paths` (files or directories), by path."""
    out = {}
    for p in paths:
        p = Path(p)
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def partial_files(root: Path) -> list[str]:
    """Temp files/directories, aside copies and quantizer scratch left anywhere under `root`."""
    return [str(p) for p in Path(root).rglob("*") if PARTIAL.search(p.name)] if Path(root).exists() else []


def assert_fault(result, *fragments: str, code: int = 2) -> str:
    """Exit `code`, exactly one `error: problem (fix)` line, no traceback; returns the line."""
    out = result.stdout + result.stderr
    assert result.exit_code == code, (result.exit_code, out, result.exception)
    assert "Traceback" not in out and not isinstance(result.exception, AssertionError), out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(line in errors or LOG_LINE.match(line) for line in lines), result.stderr
    assert re.search(r"\(.+\)$", errors[0]), f"no fix named: {errors[0]}"
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


class Inputs:
    """Snapshot the sha256 of every input; `check` asserts them unchanged and no partial output under `outputs`."""

    def __init__(self, *paths: Path):
        self.paths = [Path(p) for p in paths]
        self.before = digest_tree(*self.paths)

    def check(self, *outputs: Path) -> None:
        assert digest_tree(*self.paths) == self.before
        for out in outputs:
            assert not partial_files(out), partial_files(out)


# ---- fixtures --------------------------------------------------------------------------------


def wav(path: Path, seconds: float, subtype: str = "PCM_16", poison: float | None = None) -> Path:
    samples = (np.random.default_rng(0).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)
    if poison is not None:
        samples[SR // 2] = poison
    sf.write(path, samples, SR, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audio")
    return {
        "ok": wav(d / "ok.wav", 1.0),
        "long": wav(d / "long.wav", 61.0),
        "nan": wav(d / "nan.wav", 1.0, "FLOAT", float("nan")),
        "inf": wav(d / "inf.wav", 1.0, "FLOAT", float("inf")),
    }


def manifest(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps({"text": "HELLO", "lang": "en", "duration": 1.0} | r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def passed_run(tiny_pair, tmp_path_factory) -> Path:
    """A run directory whose baseline-only run passed and published final/ (copied per test)."""
    tmp = tmp_path_factory.mktemp("passed")
    recipe = tiny_recipe(tmp / "base.yaml", tiny_pair, [], tmp / "run")
    result = cli("run", recipe)
    assert result.exit_code == 0, result.stderr
    return tmp / "run"


@pytest.fixture
def run_dir(passed_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(passed_run, out)
    return out


@pytest.fixture(scope="module")
def quantized(tiny_pair, tmp_path_factory) -> dict[str, Path]:
    """The tiny pair after the int8 stage (run once, in this process), and with its weights cast to
    float16 (what the fp16 stage's weights are; the stage order is refused before anything runs it)."""
    from optimize.stages import load_stage

    tmp = tmp_path_factory.mktemp("kinds")
    stage = load_stage("int8")
    stage.run(tiny_pair, tmp / "int8", stage.Config())
    fp16 = copy_pair(tiny_pair, tmp / "fp16")
    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(fp16 / name))
        for t in model.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT and t.dims:
                t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float16), t.name))
        onnx.save(model, str(fp16 / name))
    return {"int8": tmp / "int8", "fp16": fp16}


def edited_pair(pair: Path, dst: Path, **metadata: str) -> Path:
    """A copy of `pair` with encoder metadata_props overridden."""
    copy_pair(pair, dst)
    model = onnx.load(str(dst / "encoder.onnx"))
    for prop in model.metadata_props:
        if prop.key in metadata:
            prop.value = metadata[prop.key]
    onnx.save(model, str(dst / "encoder.onnx"))
    return dst


# ---- 1-3. data loss and publishing -----------------------------------------------------------


@pytest.mark.parametrize("inside", ["final", "0-baseline", "."])
def test_input_inside_the_run_directory_is_refused_before_anything_is_deleted(run_dir, tmp_path, inside):
    model = run_dir / inside
    inputs = Inputs(run_dir)
    recipe = tiny_recipe(tmp_path / "r.yaml", model, ["simplify"], run_dir)
    assert_fault(cli("run", recipe), "lies inside the run directory", "copy it out first")
    inputs.check(run_dir)
    assert (run_dir / "final" / "encoder.onnx").is_file()


def test_input_reached_through_a_link_into_the_run_directory_is_refused(run_dir, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(run_dir / "final")
    inputs = Inputs(run_dir)
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", link, [], run_dir)), "lies inside the run directory")
    inputs.check(run_dir)


def test_failed_rerun_keeps_the_earlier_final_and_the_report_says_so(run_dir, tmp_path, audio):
    data = manifest(tmp_path / "m.jsonl", {"audio": str(audio["long"])})
    final = Inputs(run_dir / "final")
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair_of(run_dir), [], run_dir, data=str(data), evaluation={"mode": "full", "probes": 1, "warmup": 0})
    assert_fault(cli("run", recipe), "long.wav", "lasts 61.0 s", "60 s")
    final.check(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] is False and report["final"] is None
    assert report["earlier_final"]["outputs"] == json.loads((run_dir / "0-baseline" / "stage.json").read_text())["outputs"]
    assert "Nothing published by this run" in (run_dir / "report.md").read_text()


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_publishing_keeps_the_old_final(run_dir, tmp_path, monkeypatch):
    from optimize import pipeline

    model = shutil.copytree(run_dir / "final", tmp_path / "model")
    real = shutil.copyfile

    def copy(src, dst, **kw):
        if Path(dst).parent.name == "final.tmp" and Path(dst).name == "decoder.onnx":
            Path(dst).write_bytes(b"\0" * 10)  # part of the file, then the disk is full
            raise enospc(dst)
        return real(src, dst, **kw)

    monkeypatch.setattr(pipeline.shutil, "copyfile", copy)
    inputs = Inputs(model, run_dir / "final")
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", model, [], run_dir)), "No space left on device", "free disk space")
    inputs.check(run_dir)
    assert json.loads((run_dir / "report.json").read_text())["passed"] is False


@pytest.mark.parametrize("target, code", [("report.json.tmp", errno.ENOSPC), ("report.md.tmp", errno.EROFS), ("stage.json.tmp", errno.ENOSPC), ("encoder.onnx", errno.EDQUOT)])
def test_environment_faults_while_writing_leave_no_partial_file(tiny_pair, tmp_path, monkeypatch, target, code):
    """Disk full / read-only / quota mid-run: one line, the temp file is gone, nothing published."""
    from optimize import pipeline

    real_write, real_copy = Path.write_bytes, shutil.copyfile

    def fail(path):
        path = Path(path)
        with open(path, "wb") as f:
            f.write(b"{")  # a partial file, as a full disk leaves it
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(Path, "write_bytes", lambda self, data: fail(self) if self.name == target else real_write(self, data))
    monkeypatch.setattr(Path, "write_text", lambda self, data, **kw: fail(self) if self.name == target else real_write(self, data.encode()))
    monkeypatch.setattr(pipeline.shutil, "copyfile", lambda s, d, **kw: fail(d) if Path(d).name == target else real_copy(s, d, **kw))
    inputs = Inputs(tiny_pair)
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")), os.strerror(code))
    inputs.check(tmp_path / "run")
    assert not (tmp_path / "run" / "final").exists()


def test_output_that_is_a_file_is_refused(tiny_pair, tmp_path):
    out = tmp_path / "out"
    out.write_text("my notes")
    inputs = Inputs(tiny_pair, out)
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], out)), "is a file, not a directory")
    inputs.check()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_output_is_one_line(tiny_pair, tmp_path, monkeypatch, code):
    from optimize import rundir

    real = os.open

    def deny(path, *a, **kw):
        if str(path).endswith(rundir.LOCK):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(rundir.os, "open", deny)
    inputs = Inputs(tiny_pair)
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")), "cannot create the run directory", os.strerror(code))
    inputs.check(tmp_path / "run")


def test_a_stage_on_a_full_disk_fails_in_one_line_and_writes_nothing_beside_its_input(run_dir, tmp_path):
    """A real file-size limit (as a full disk) in a real process tree: the int8 child refuses to
    start; no quantizer scratch in the previous stage's directory, no temp directory, final/ as it was."""
    run, pair = run_dir, tiny_pair_of(run_dir)
    recipe = tiny_recipe(tmp_path / "q.yaml", pair, ["int8"], run)  # the baseline and its evaluation are cached
    limit = (pair / "encoder.onnx").stat().st_size // 2  # the int8 outputs would fit, an fp32-size copy not
    inputs = Inputs(pair, run / "0-baseline", run / "final")

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "optimize.cli", "run", str(recipe)], capture_output=True, text=True, preexec_fn=limited, timeout=600)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr and "the file-size limit (ulimit -f) is" in errors[0], proc.stderr
    inputs.check(run)
    assert not (run / "1-int8").exists()


# ---- 2. one run per directory ----------------------------------------------------------------


def test_a_locked_run_directory_is_refused_naming_the_holder(run_dir, tmp_path):
    from optimize import rundir

    inputs = Inputs(run_dir)
    with rundir.locked(run_dir):
        line = assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", tiny_pair_of(run_dir), [], run_dir)), "in use by another optimize run")
    assert f"pid {os.getpid()}" in line
    # the holder wrote its pid into the lock file; nothing else changed
    assert digest_tree(run_dir) == inputs.before | {str(run_dir / rundir.LOCK): digest_tree(run_dir / rundir.LOCK)[str(run_dir / rundir.LOCK)]}


def tiny_pair_of(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "report.json").read_text())["model"])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job may have it ignored; a terminal's does not


def spawn_run(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "optimize.cli", "run", str(recipe), *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip


def wait_for_line(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stderr:  # type: ignore[union-attr]
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r} (exit {proc.wait()})")


def test_two_runs_on_one_directory_the_second_is_refused_and_the_first_publishes(tiny_pair, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    first = spawn_run(recipe)
    try:
        wait_for_line(first, "0-baseline: running")
        os.killpg(first.pid, signal.SIGSTOP)  # holds the lock, mid-run, however fast this machine is
        try:
            second = cli("run", recipe)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert_fault(second, "in use by another optimize run", f"pid {first.pid}")
        rest = first.stderr.read()  # type: ignore[union-attr]
        assert first.wait(timeout=600) == 0, rest
    finally:
        if first.poll() is None:
            first.kill()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["passed"] and [r["name"] for r in report["stages"]] == ["baseline"]
    assert digest_tree(tmp_path / "run" / "final") and not partial_files(tmp_path / "run")


def test_the_lock_dies_with_its_holder(tmp_path):
    from optimize import rundir

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from optimize import rundir
        with rundir.locked(Path({str(tmp_path / 'run')!r})):
            print("locked", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
    with pytest.raises(OptimizeError, match=f"pid {holder.pid}"):
        with rundir.locked(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait()
    with rundir.locked(tmp_path / "run"):  # kill -9 released it
        pass


# ---- 5. children die with their parent; Ctrl-C --------------------------------------------------


def session_members(sid: int) -> set[int]:
    """Pids of live processes in session `sid` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.add(int(stat.parent.name))
    return out


def started_children(sid: int) -> list[int]:
    """Pids in session `sid` of children in `run_in_child`'s body (they ignore SIGINT from its first line)."""
    out = []
    for pid in session_members(sid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
        if b"spawn_main" in cmd and ignored & (1 << (signal.SIGINT - 1)):
            out.append(pid)
    return out


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_child_dies_with_its_parent(tmp_path, sig):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from optimize.child import run_in_child
        run_in_child("sleep", time.sleep, 600)
    """)], start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: started_children(parent.pid), "the child to start")
        parent.send_signal(sig)  # the parent alone
        parent.wait(timeout=WAIT_S)
        wait_until(lambda: not session_members(parent.pid), "the child to die with its parent")
    finally:
        for pid in session_members(parent.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_child_killed_from_outside_is_one_line():
    from optimize.child import run_in_child

    with pytest.raises(OptimizeError, match=r"the stage int8 process died without an answer \(killed by SIGKILL\)") as e:
        run_in_child("stage int8", _kill_self)
    assert "out-of-memory" in e.value.fix


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")
@pytest.mark.parametrize("sig, word", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")])
def test_ctrl_c_or_sigterm_mid_run_is_one_line_and_leaves_no_child(tiny_pair, tmp_path, sig, word):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    inputs = Inputs(tiny_pair)
    proc = spawn_run(recipe)
    try:
        wait_for_line(proc, "0-baseline: running")
        wait_until(lambda: started_children(proc.pid), "a stage or evaluation child")
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C reaches the whole foreground group
        else:
            proc.send_signal(sig)
        err = proc.stderr.read()  # type: ignore[union-attr]
        assert proc.wait(timeout=WAIT_S) == 130, err
        wait_until(lambda: not session_members(proc.pid), "no process left")
    finally:
        for pid in session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {word} (re-run the same command to resume: finished stages are cached)"], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    inputs.check(tmp_path / "run")
    assert not (tmp_path / "run" / "final").exists()


# ---- 6. stage preconditions from what the input graphs are ---------------------------------


def test_graph_kinds(tiny_pair, quantized):
    from optimize.stages import pair_kind

    assert (pair_kind(tiny_pair), pair_kind(quantized["int8"]), pair_kind(quantized["fp16"])) == ("fp32", "int8", "fp16")


@pytest.mark.parametrize("model, stages, fragments", [
    ("int8", ["int8"], ["is already quantized", "start from the published fp32 or fp16 files or from the official checkpoint"]),
    ("int8", ["int8_weight_only"], ["already quantized"]),
    ("int8", ["simplify", "int4_weight_only"], ["already quantized"]),
    ("int8", ["fp16"], ["fp16 needs float32 graphs", "already int8"]),
    ("int8", ["fuse"], ["fuse matches float32 patterns", "put fuse before int8"]),
    ("fp16", ["fp16"], ["already fp16", "drop the fp16 stage"]),
    ("fp16", ["int8"], ["int8 needs float32 graphs and the encoder is fp16"]),
    ("fp32", ["int8", "int8"], ["stages[1] int8: the encoder is already quantized (after the stages before it)"]),
    ("fp32", ["int8", "fuse"], ["stages[1] fuse", "put fuse before int8"]),
    ("fp32", ["fp16", "int8"], ["stages[1] int8", "fp16"]),
    ("fp32", ["int8", "fp16"], ["stages[1] fp16", "already int8"]),
    ("fp32", ["fuse", "simplify", "fuse"], ["stages[2] fuse: the encoder is already fused", "drop the fuse stage"]),
])  # fmt: skip
def test_nonsense_stage_order_is_refused_before_any_stage_runs(tiny_pair, quantized, tmp_path, model, stages, fragments):
    src = tiny_pair if model == "fp32" else quantized[model]
    inputs = Inputs(src)
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", src, stages, tmp_path / "run")), *fragments)
    inputs.check(tmp_path / "run")
    run = tmp_path / "run"  # refused before the run directory exists, or right after the baseline copy
    made = sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) if run.exists() else []
    assert made in ([], ["0-baseline", "report.json", "report.md", "report.png"]), made


def test_a_stage_called_as_a_library_refuses_a_quantized_input(quantized, tmp_path):
    from optimize.stages import load_stage

    stage = load_stage("int8")
    with pytest.raises(OptimizeError, match="already quantized"):
        stage.run(quantized["int8"], tmp_path / "out", stage.Config())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


# ---- 4, 7, 13. limits ------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["--beam-size", "100000"], ["beam_size=100000", "beam_size <= 16"]),
    (["--beam-size", "0"], ["beam_size=0"]),
    (["--batch-size", "100000"], ["batch_size=100000"]),
    (["--threads", "-1"], ["threads is -1"]),
    (["--threads", "100000"], ["threads is 100000"]),
])  # fmt: skip
def test_transcribe_limits(tiny_pair, audio, args, fragments):
    inputs = Inputs(tiny_pair, audio["ok"])
    assert_fault(cli("transcribe", tiny_pair, audio["ok"], *args), *fragments)
    inputs.check()


def test_long_audio_is_readable_for_callers_that_segment_it(audio):
    from optimize.runtime.audio import load_audio

    assert len(load_audio(audio["long"], max_seconds=None)) == 61 * SR


def test_eval_refuses_an_utterance_over_60_s_naming_it(tiny_pair, audio, tmp_path):
    data = manifest(tmp_path / "m.jsonl", {"audio": str(audio["ok"])}, {"audio": str(audio["long"])})
    inputs = Inputs(tiny_pair, data, audio["long"])
    assert_fault(cli("eval", tiny_pair, "--data", data), f"eval set {data}", "long.wav lasts 61.0 s")
    inputs.check()


@pytest.mark.parametrize("option, value, fragment", [("--threads", "-1", "threads is -1"), ("--provider", "tpu", "tpu")])
def test_eval_and_run_check_their_numbers(tiny_pair, audio, tmp_path, option, value, fragment):
    inputs = Inputs(tiny_pair)
    assert_fault(cli("eval", tiny_pair, "--data", manifest(tmp_path / "m.jsonl", {"audio": str(audio["ok"])}), option, value), fragment)
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run"), option, value), fragment)
    inputs.check(tmp_path / "run")
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("recipe_change, fragment", [
    ({"decode": {"beam_size": 17}}, "beam_size=17"),
    ({"threads": -2}, "threads is -2"),
    ({"threads": 5000}, "threads is 5000"),
])  # fmt: skip
def test_recipe_limits(tiny_pair, tmp_path, recipe_change, fragment):
    assert_fault(cli("run", tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run", **recipe_change)), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("opset", ["5", "12", "99"])
def test_export_opset_out_of_range_is_one_line(tiny_ckpt, tmp_path, opset):
    inputs = Inputs(tiny_ckpt)
    assert_fault(cli("export", tiny_ckpt, "-o", tmp_path / "out", "--opset", opset), f"opset {opset} is outside the supported range", "from 13 to 20")
    inputs.check(tmp_path)
    assert not (tmp_path / "out").exists()


def test_export_to_a_file_is_one_line(tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.write_text("not a directory")
    inputs = Inputs(tiny_ckpt, out)
    assert_fault(cli("export", tiny_ckpt, "-o", out), "is a file, not a directory")
    inputs.check(tmp_path)


# ---- 9. NaN/Inf audio ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_audio_is_one_line(tiny_pair, audio, tmp_path, kind):
    inputs = Inputs(tiny_pair, audio[kind])
    assert_fault(cli("transcribe", tiny_pair, audio[kind]), f"{kind}.wav has 1 NaN/Inf sample(s), the first at 0.500 s", "re-encode")
    data = manifest(tmp_path / "m.jsonl", {"audio": str(audio[kind])})
    assert_fault(cli("eval", tiny_pair, "--data", data), f"{kind}.wav has 1 NaN/Inf")
    inputs.check()


def test_non_finite_samples_in_the_library_are_refused(tiny_pair):
    from optimize.runtime.recognizer import Recognizer

    samples = np.zeros(SR, dtype=np.float32)
    samples[10] = np.nan
    with pytest.raises(OptimizeError, match="NaN/Inf"):
        Recognizer(tiny_pair, threads=1).features(samples)


# ---- 10. corrupt metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("change, fragment", [
    ({"cmvn_mean": ",".join(["0.0"] * 79)}, "cmvn_mean holds 79 values"),
    ({"cmvn_inv_stddev": ",".join(["nan"] * 80)}, "cmvn_inv_stddev holds 80 values (finite: False)"),
    ({"sos": "100000"}, "sos=100000 lies outside the vocabulary"),
    ({"eos": "-1"}, "eos=-1 lies outside the vocabulary"),
    ({"num_head": "abc"}, "malformed metadata"),
])  # fmt: skip
def test_corrupt_metadata_is_one_line(tiny_pair, audio, tmp_path, change, fragment):
    pair = edited_pair(tiny_pair, tmp_path / "pair", **change)
    inputs = Inputs(pair, audio["ok"])
    assert_fault(cli("transcribe", pair, audio["ok"]), fragment)
    inputs.check()


# ---- 11. non-UTF-8 files -----------------------------------------------------------------------


def latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


def test_non_utf8_tokens_is_one_line(tiny_pair, audio, tmp_path):
    pair = copy_pair(tiny_pair, tmp_path / "pair")
    raw = (pair / "tokens.txt").read_bytes()
    (pair / "tokens.txt").write_bytes(raw.replace(b"\n", b"\xe9\n", 1))
    inputs = Inputs(pair)
    assert_fault(cli("transcribe", pair, audio["ok"]), "tokens.txt is not UTF-8", "re-save")
    inputs.check()


def test_non_utf8_recipe_is_one_line(tiny_pair, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    latin1(recipe, recipe.read_text() + "# café\n")
    inputs = Inputs(recipe)
    assert_fault(cli("run", recipe), "is not UTF-8", "re-save it as UTF-8")
    inputs.check()


@pytest.mark.parametrize("layout", ["jsonl", "kaldi"])
def test_non_utf8_manifest_is_one_line(tiny_pair, audio, tmp_path, layout):
    if layout == "jsonl":
        data = latin1(tmp_path / "m.jsonl", json.dumps({"audio": str(audio["ok"]), "text": "café", "lang": "en", "duration": 1.0}, ensure_ascii=False) + "\n")
    else:
        data = tmp_path / "kaldi"
        data.mkdir()
        (data / "wav.scp").write_text(f"u1 {audio['ok']}\n")
        latin1(data / "text", "u1 café\n")
    inputs = Inputs(data)
    assert_fault(cli("eval", tiny_pair, "--data", data), "is not UTF-8")
    inputs.check()


# ---- 12. silent misreads -------------------------------------------------------------------------


@pytest.mark.parametrize("row, fragment", [({"text": None}, "text is null"), ({"audio": None}, "audio is null"), ({"duration": -1}, "duration is -1")])
def test_manifest_nulls_and_nonsense_are_one_line(tiny_pair, audio, tmp_path, row, fragment):
    data = manifest(tmp_path / "m.jsonl", {"audio": str(audio["ok"])} | row)
    inputs = Inputs(data)
    assert_fault(cli("eval", tiny_pair, "--data", data), f"{data}:1: {fragment}")
    inputs.check()


@pytest.mark.parametrize("text, fragment", [
    ("threads: 1\nthreads: 4\n", "recipe key 'threads' is given twice (lines"),
    ("gates:\n  min_speedup: 1\n  min_speedup: 2\n", "recipe key 'min_speedup' is given twice"),
])  # fmt: skip
def test_duplicate_yaml_keys_are_one_line(tiny_pair, tmp_path, text, fragment):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    body = yaml.safe_load(recipe.read_text())
    body.pop("threads")
    if "gates" in text:
        body.pop("gates")
    recipe.write_text(yaml.safe_dump(body) + text)
    assert_fault(cli("run", recipe), fragment)
    assert not (tmp_path / "run").exists()


# ---- 8. environment: eval --json, missing external data --------------------------------------


def test_eval_json_into_a_missing_directory_fails_before_evaluating(tiny_pair, tmp_path):
    assert_fault(cli("eval", tiny_pair, "--json", tmp_path / "no" / "such" / "eval.json"), "its directory does not exist")
    assert not (tmp_path / "no").exists()


def test_eval_json_that_is_a_directory_is_one_line(tiny_pair, tmp_path):
    assert_fault(cli("eval", tiny_pair, "--json", tmp_path), "it is a directory")


def test_eval_json_on_a_full_disk_leaves_no_file(tiny_pair, tmp_path, monkeypatch):
    from optimize import pipeline

    monkeypatch.setattr(pipeline, "evaluate_pair", lambda *a, **kw: {"metrics": {"failures": []}})
    real = Path.write_bytes

    def full(self, data):
        if self.name.endswith(".tmp"):
            real(self, b"")
            raise enospc(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert_fault(cli("eval", tiny_pair, "--json", tmp_path / "eval.json"), "No space left on device")
    assert list(tmp_path.iterdir()) == []


def external_pair(pair: Path, dst: Path) -> Path:
    from optimize import graph

    dst.mkdir()
    for f in ("encoder.onnx", "decoder.onnx"):
        onnx.save_model(onnx.load(str(pair / f)), str(dst / f), save_as_external_data=True, location=f + ".data", size_threshold=0)
    shutil.copyfile(pair / "tokens.txt", dst / "tokens.txt")
    assert graph.external_files(dst / "encoder.onnx")
    return dst


@pytest.mark.parametrize("command", ["run", "transcribe", "eval"])
def test_missing_external_data_is_one_line(tiny_pair, audio, tmp_path, command):
    pair = external_pair(tiny_pair, tmp_path / "pair")
    (pair / "encoder.onnx.data").unlink()
    inputs = Inputs(pair)
    args = {"run": ["run", tiny_recipe(tmp_path / "r.yaml", pair, ["simplify"], tmp_path / "run")],
            "transcribe": ["transcribe", pair, audio["ok"]], "eval": ["eval", pair]}[command]  # fmt: skip
    assert_fault(cli(*args), "encoder.onnx.data, which is missing", "copy the .data file")
    inputs.check(tmp_path / "run")
    assert not (tmp_path / "run" / "final").exists()


# ---- 14. typos and paths -----------------------------------------------------------------------


@pytest.mark.parametrize("change, fragments", [
    ({"gatse": {}}, ["recipe: unknown key 'gatse'", "did you mean 'gates'?"]),
    ({"stages": ["simplfy"]}, ["stages[0]: unknown stage 'simplfy'", "did you mean 'simplify'?"]),
    ({"stages": [{"int8": {"per_chanel": True}}]}, ["unknown key 'per_chanel'", "did you mean 'per_channel'?"]),
    ({"model": None}, ["recipe lacks model", "add `model:` to the recipe (or pass --model)"]),
])  # fmt: skip
def test_recipe_typos_are_one_line(tiny_pair, tmp_path, change, fragments):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    body = yaml.safe_load(recipe.read_text()) | change
    recipe.write_text(yaml.safe_dump({k: v for k, v in body.items() if v is not None}))
    assert_fault(cli("run", recipe), *fragments)
    assert not (tmp_path / "run").exists()


def test_recipe_without_model_runs_with_model_flag(tiny_pair, tmp_path):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    body = yaml.safe_load(recipe.read_text())
    body.pop("model")
    recipe.write_text(yaml.safe_dump(body))
    from optimize.recipe import load_recipe

    assert load_recipe(recipe, model=tiny_pair).model == tiny_pair


@pytest.mark.parametrize("args, fragments", [
    (["transcribe", "{pair}", "{ok}", "--beam-sise", "3"], ["No such option: --beam-sise", "--beam-size", "transcribe --help"]),
    (["run"], ["Missing argument"]),
    (["run", "{recipe}", "--threads", "many"], ["Invalid value for '--threads'"]),
    (["transcribe", "{ok}", "{ok}"], ["is a file, not a directory"]),
    (["transcribe", "{missing}", "{ok}"], ["does not exist"]),
    (["transcribe", "{pair}", "{missing}"], ["does not exist"]),
    (["run", "{recipe}", "--model", "{ok}"], ["is a file, not a directory"]),
    (["run", "{pair}"], ["is a directory"]),
])  # fmt: skip
def test_command_line_mistakes_are_one_line(tiny_pair, audio, tmp_path, args, fragments):
    recipe = tiny_recipe(tmp_path / "r.yaml", tiny_pair, [], tmp_path / "run")
    names = {"pair": tiny_pair, "ok": audio["ok"], "missing": tmp_path / "missing", "recipe": recipe}
    inputs = Inputs(tiny_pair, audio["ok"], recipe)
    assert_fault(cli(*[a.format(**names) for a in args]), *fragments)
    inputs.check(tmp_path)
    assert not (tmp_path / "run").exists()
