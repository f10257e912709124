"""Shared fixtures: a tiny random FireRedASR AED checkpoint in the official format and its exports.

Session-scoped: exported once per test run. Dimensions are small but exercise every
module (2 encoder blocks, 2 decoder layers, 4 heads, kernel 5).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

TINY_DIMS = dict(d_model=64, n_head=4, n_layers_enc=2, n_layers_dec=2, kernel_size=5, odim=60)


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

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny_ckpt"), seed=0, **TINY_DIMS)


@pytest.fixture(scope="session")
def tiny_pair(tiny_ckpt, tmp_path_factory):
    """Exported dynamic-cache pair: encoder.onnx, decoder.onnx, tokens.txt."""
    from optimize.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("tiny_pair")
    export_checkpoint(tiny_ckpt, out)
    return out


@pytest.fixture(scope="session")
def tiny_pair_v1(tiny_ckpt, tmp_path_factory):
    """Exported published-v1 layout: self-cache length fixed at 1024."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("tiny_pair_v1")
    export_checkpoint(tiny_ckpt, out, ExportConfig(fixed_cache_len=1024))
    return out


@pytest.fixture(scope="session")
def tiny_ckpt_v2(tmp_path_factory):
    """FireRedASR2-format checkpoint (the v1 keys plus the CTC head `ctc.ctc_lo`), random weights."""
    from optimize.export.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny_ckpt_v2"), seed=5, version=2, **TINY_DIMS)


@pytest.fixture(scope="session")
def tiny_pair_v2(tiny_ckpt_v2, tmp_path_factory):
    """tiny_ckpt_v2 exported with --with-ctc (dynamic cache): the contract's outputs plus ctc_log_probs."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("tiny_pair_v2")
    export_checkpoint(tiny_ckpt_v2, out, ExportConfig(with_ctc=True))
    return out


@pytest.fixture(scope="session")
def default_ckpt_v2(tmp_path_factory):
    """The embedded default's trained checkpoint in FireRedASR2 format: its keys plus a CTC head.

    The AED weights are trained, so decoding the eval audio gives varied, eos-terminated
    hypotheses; the CTC head is random (seeded), which alignment parity does not mind.
    """
    import shutil
    from pathlib import Path

    import torch

    src = Path(__file__).resolve().parents[1] / "artifacts" / "firered-aed-tiny" / "checkpoint"
    if not (src / "model.pth.tar").is_file():
        pytest.skip("the embedded default checkpoint is not in this checkout")
    out = tmp_path_factory.mktemp("default_ckpt_v2")
    for f in ("cmvn.ark", "dict.txt"):
        shutil.copy(src / f, out / f)
    package = torch.load(src / "model.pth.tar", map_location="cpu", weights_only=False)
    args, state = package["args"], package["model_state_dict"]
    gen = torch.Generator().manual_seed(13)
    state["ctc.ctc_lo.weight"] = torch.randn(args.odim, args.d_model, generator=gen) * 0.2
    state["ctc.ctc_lo.bias"] = torch.randn(args.odim, generator=gen) * 0.1
    torch.save(package, out / "model.pth.tar")
    return out


@pytest.fixture(scope="session")
def default_pair_v2(default_ckpt_v2, tmp_path_factory):
    """default_ckpt_v2 exported with --with-ctc."""
    from optimize.export.exporter import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("default_pair_v2")
    export_checkpoint(default_ckpt_v2, out, ExportConfig(with_ctc=True))
    return out
