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
