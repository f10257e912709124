"""Shared fixtures: a tiny random FireRedASR AED checkpoint in the official format and its exports.

Session-scoped: exported once per test run. Dimensions are small but exercise every
module (2 encoder blocks, 2 decoder layers, 4 heads, kernel 5).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

TINY_DIMS = dict(d_model=64, n_head=4, n_layers_enc=2, n_layers_dec=2, kernel_size=5, odim=60)

if "PYTEST_XDIST_WORKER" in os.environ:
    # Two workers share the cores: torch's OpenMP pool gets one thread per worker (read when torch
    # is imported, and by the processes the tests start), else the pools' spinning threads contend.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest tests that share no module fixture (30-60 s CPU each on this machine, --durations).
LONGEST = ("test_cpu_benchmark_runs_end_to_end", "test_shipped_recipe_passes_on_the_embedded_default")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (README: `-n 2 --dist loadgroup`)
def pytest_collection_modifyitems(items):
    """Under pytest-xdist, the tests that share a module-scoped fixture run on one worker, so it is
    built once; every other test is scheduled on its own (whichever worker is free). A fixture only
    one module uses is module-scoped for this; conftest's session fixtures go through `once`."""
    for item in items:
        defs = item._fixtureinfo.name2fixturedefs.values()
        if not item.get_closest_marker("xdist_group") and any(d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # The longest single tests first (stable sort, nothing else moves): xdist hands out work in
    # this order, so they do not start last and leave one worker running alone at the end.
    items.sort(key=lambda item: item.originalname not in LONGEST)


def once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A session fixture's directory, built once per test run. Under pytest-xdist the workers share
    it: the first to get here builds it under a file lock, the others wait and reuse it (each pair
    is exported once per run, not once per worker). Nothing may write into it afterwards."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent  # the run's directory, above every worker's own
    out, done = root / name, root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.is_file():
            shutil.rmtree(out, ignore_errors=True)  # a worker that died half-way
            out.mkdir()
            build(out)
            done.touch()
    return out


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Directory with model.pth.tar, cmvn.ark, dict.txt (random weights)."""
    from optimize.export.checkpoint import make_random_checkpoint

    return once(tmp_path_factory, "tiny_ckpt", lambda out: make_random_checkpoint(out, seed=0, **TINY_DIMS))


@pytest.fixture(scope="session")
def tiny_pair(tiny_ckpt, tmp_path_factory):
    """Exported dynamic-cache pair: encoder.onnx, decoder.onnx, tokens.txt."""
    from optimize.export.exporter import export_checkpoint

    return once(tmp_path_factory, "tiny_pair", lambda out: export_checkpoint(tiny_ckpt, out))


@pytest.fixture(scope="session")
def tiny_pair_v1(tiny_ckpt, tmp_path_factory):
    """Exported published-v1 layout: self-cache length fixed at 1024."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    return once(tmp_path_factory, "tiny_pair_v1", lambda out: export_checkpoint(tiny_ckpt, out, ExportConfig(fixed_cache_len=1024)))


@pytest.fixture(scope="session")
def tiny_ckpt_v2(tmp_path_factory):
    """FireRedASR2-format checkpoint (the v1 keys plus the CTC head `ctc.ctc_lo`), random weights."""
    from optimize.export.checkpoint import make_random_checkpoint

    return once(tmp_path_factory, "tiny_ckpt_v2", lambda out: make_random_checkpoint(out, seed=5, version=2, **TINY_DIMS))


@pytest.fixture(scope="session")
def tiny_pair_v2(tiny_ckpt_v2, tmp_path_factory):
    """tiny_ckpt_v2 exported with --with-ctc (dynamic cache): the contract's outputs plus ctc_log_probs."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    return once(tmp_path_factory, "tiny_pair_v2", lambda out: export_checkpoint(tiny_ckpt_v2, out, ExportConfig(with_ctc=True)))


@pytest.fixture(scope="session")
def default_ckpt_v2(tmp_path_factory):
    """The embedded default's trained checkpoint in FireRedASR2 format: its keys plus a CTC head.

    The AED weights are trained, so decoding the eval audio gives varied, eos-terminated
    hypotheses; the CTC head is random (seeded), which alignment parity does not mind.
    """
    import torch

    src = Path(__file__).resolve().parents[1] / "artifacts" / "firered-aed-tiny" / "checkpoint"
    if not (src / "model.pth.tar").is_file():
        pytest.skip("the embedded default checkpoint is not in this checkout")

    def build(out: Path) -> None:
        for f in ("cmvn.ark", "dict.txt"):
            shutil.copy(src / f, out / f)
        shutil.copy(src / "train_bpe.model", out / "train_bpe1000.model")  # the name FireRedASR2's loader opens
        package = torch.load(src / "model.pth.tar", map_location="cpu", weights_only=False)
        args, state = package["args"], package["model_state_dict"]
        gen = torch.Generator().manual_seed(13)
        state["ctc.ctc_lo.weight"] = torch.randn(args.odim, args.d_model, generator=gen) * 0.2
        state["ctc.ctc_lo.bias"] = torch.randn(args.odim, generator=gen) * 0.1
        torch.save(package, out / "model.pth.tar")

    return once(tmp_path_factory, "default_ckpt_v2", build)


@pytest.fixture(scope="session")
def default_pair_v2(default_ckpt_v2, tmp_path_factory):
    """default_ckpt_v2 exported with --with-ctc."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    return once(tmp_path_factory, "default_pair_v2", lambda out: export_checkpoint(default_ckpt_v2, out, ExportConfig(with_ctc=True)))


def reshape_decoder(decoder, eos: int, eos_bias: float = 0.5) -> None:
    """Make random-weight decoding depend on the input and stop at EOS sometimes.

    At random init the scaled, tied embedding dominates the residual stream and the
    decoder repeats its input token forever. Shrinking the embedding and
    strengthening cross attention lets the encoder decide; `eos_bias` (added to the
    EOS logit through the final LayerNorm bias) makes some hypotheses end early.
    """
    import torch

    with torch.no_grad():
        decoder.tgt_word_emb.weight.mul_(0.05)
        for layer in decoder.layer_stack:
            layer.cross_attn.fc.weight.mul_(4.0)
            for w in (layer.self_attn.fc.weight, layer.mlp.w_1.weight, layer.mlp.w_2.weight):
                w.mul_(2.0)
        e = decoder.tgt_word_emb.weight[eos]
        decoder.layer_norm_out.bias.add_(eos_bias * e / e.dot(e))


@pytest.fixture(scope="session")
def varied_ckpt(tiny_ckpt, tmp_path_factory):
    """tiny_ckpt with its decoder reshaped (reshape_decoder): tokens vary with the input and end at EOS sometimes."""
    from optimize.export.checkpoint import load_checkpoint, save_checkpoint

    def build(out: Path) -> None:
        ckpt = load_checkpoint(tiny_ckpt)
        reshape_decoder(ckpt.model.decoder, ckpt.model.dims.eos_id)
        save_checkpoint(out, ckpt.model, ckpt.cmvn_stats, ckpt.tokens)

    return once(tmp_path_factory, "varied_ckpt", build)


@pytest.fixture(scope="session")
def pair(varied_ckpt, tmp_path_factory):
    """varied_ckpt exported with the dynamic self-cache (the recognizer and IOBinding tests' model)."""
    from optimize.export.exporter import export_checkpoint

    return once(tmp_path_factory, "varied_pair", lambda out: export_checkpoint(varied_ckpt, out))


@pytest.fixture(scope="session")
def pair_v1(varied_ckpt, tmp_path_factory):
    """varied_ckpt exported in the published v1 layout (self-cache fixed at 1024)."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    return once(tmp_path_factory, "varied_pair_v1", lambda out: export_checkpoint(varied_ckpt, out, ExportConfig(fixed_cache_len=1024)))


@pytest.fixture(scope="session")
def published_layout(pair_v1, tmp_path_factory):
    """pair_v1 rewritten to the published v1 I/O: batch dims fixed at 1, no cross_attn_mask input."""
    import onnx

    from optimize import contract

    def build(out: Path) -> None:
        for name in (contract.ENCODER_FILE, contract.DECODER_FILE):
            model = onnx.load(str(pair_v1 / name))
            for value in list(model.graph.input) + list(model.graph.output):
                for dim in value.type.tensor_type.shape.dim:
                    if dim.dim_param == "N":
                        dim.dim_value = 1
            for value in list(model.graph.input):
                if value.name == contract.CROSS_MASK:
                    model.graph.input.remove(value)  # the zero initializer stays, as a constant
            onnx.save(model, str(out / name))
        shutil.copyfile(pair_v1 / contract.TOKENS_FILE, out / contract.TOKENS_FILE)

    return once(tmp_path_factory, "published_layout", build)
