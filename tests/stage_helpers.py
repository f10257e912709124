"""Helpers shared by the stage and pipeline tests: parity, contract, broken inputs, tiny recipes."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import yaml
from typer.testing import CliRunner

from optimize import contract, graph
from optimize.cli import app
from optimize.errors import OptimizeError
from optimize.evaluate import parity
from optimize.runtime.session import OrtPair

PROBE_STEPS = 12  # forced greedy steps per probe: random-weight models do not stop on their own


def probe_parity(src: Path, dst: Path, probes: int = 3) -> parity.Parity:
    """Parity of the pair in `dst` against the pair in `src` on synthetic probes of 150..730 frames."""
    feats = parity.synthetic_probes(probes)
    ref = OrtPair(src, "cpu", 1)
    runs = [parity.run_probe(ref, f, PROBE_STEPS, True) for f in feats]
    result, _ = parity.compare(OrtPair(dst, "cpu", 1), feats, runs, PROBE_STEPS, True)
    return result


def assert_contract_kept(src: Path, dst: Path) -> None:
    """I/O, metadata_props (byte-for-byte) and the overridable cross_attn_mask are as in `src`."""
    for fname in (contract.ENCODER_FILE, contract.DECODER_FILE):
        a, b = graph.load(src / fname, load_external=False), graph.load(dst / fname, load_external=False)
        assert graph.io_signature(b) == graph.io_signature(a), fname
        assert graph.metadata(b) == graph.metadata(a), fname
        assert set(graph.overridable_initializers(b)) == set(graph.overridable_initializers(a)), fname
    assert contract.CROSS_MASK in graph.overridable_initializers(graph.load(dst / contract.DECODER_FILE))
    sessions = OrtPair(dst, "cpu", 1)
    assert contract.CROSS_MASK in {i.name for i in sessions.decoder.get_overridable_initializers()}
    assert (dst / contract.TOKENS_FILE).read_bytes() == (src / contract.TOKENS_FILE).read_bytes()


def copy_pair(pair: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in pair.iterdir():
        shutil.copyfile(f, dst / f.name)
    return dst


def truncated_pair(pair: Path, dst: Path) -> Path:
    """A copy of `pair` whose encoder.onnx is cut in half (an interrupted download)."""
    copy_pair(pair, dst)
    enc = dst / contract.ENCODER_FILE
    enc.write_bytes(enc.read_bytes()[: enc.stat().st_size // 2])
    return dst


def outside_contract_pair(pair: Path, dst: Path) -> Path:
    """A copy of `pair` whose decoder output `logits` is renamed: sherpa-onnx would read garbage."""
    copy_pair(pair, dst)
    model = onnx.load(str(dst / contract.DECODER_FILE))
    for node in model.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    next(o for o in model.graph.output if o.name == "logits").name = "scores"
    onnx.save(model, str(dst / contract.DECODER_FILE))
    return dst


def tiny_recipe(path: Path, model: Path, stages: list, output: Path, gates: dict | None = None, **top) -> Path:
    """A parity_only recipe small enough for tests (random-weight models have no error rate)."""
    recipe = {
        "model": str(model),
        "data": None,
        "output": str(output),
        "threads": 1,
        "decode": {"beam_size": 1, "max_len": 6},
        "evaluation": {"mode": "parity_only", "probes": 2, "probe_steps": 6, "warmup": 1, "smoke_frames": [40, 210]},
        "stages": stages,
        "gates": gates or {"max_error_rate_increase": 0.5, "min_token_agreement": 0.0, "min_speedup": 0.01},
    } | top
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: str, isolate: bool = False):
    """Invoke the CLI in this process; returns click's Result (exit_code, stdout, stderr).

    `optimize run` then also runs its stages and evaluations here (`--in-process`): same
    outputs and cache keys, without a 2-3 s interpreter start per stage and evaluation.
    The CLI's default, a process per stage, is tested where it matters (peak memory,
    kill and resume, torch never imported) in test_pipeline.py, or with `isolate=True`.
    """
    argv = [str(a) for a in args]
    if argv[:1] == ["run"] and not isolate:
        argv.append("--in-process")
    return CliRunner().invoke(app, argv)


def assert_one_line_failure(result, *fragments: str, code: int = 2) -> None:
    """Exit `code` (2 bad input, 1 a failed check or gate) with exactly one `error: ...` line naming every fragment."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def refused(run_stage, src: Path, out: Path, match: str) -> Exception:
    """`run_stage(src, out)` raises OptimizeError matching `match` and leaves no `out`; returns the error."""
    import pytest

    from optimize.errors import OptimizeError

    with pytest.raises(OptimizeError, match=match) as e:
        run_stage(src, out)
    assert not out.exists()
    return e.value


def assert_truncated_input_refused(run_stage, pair: Path, tmp: Path) -> None:
    """A truncated input file: a one-line error and no output directory."""
    error = refused(run_stage, truncated_pair(pair, tmp / "broken"), tmp / "out", "not a readable ONNX model")
    assert "\n" not in str(error)


def cuda_starts() -> bool:
    """Whether the CUDA provider really starts here (onnxruntime-gpu lists it even without libraries or a device)."""
    from optimize.runtime.providers import ProviderOptions, check_cuda

    try:
        check_cuda(ProviderOptions())
    except OptimizeError:
        return False
    return True
