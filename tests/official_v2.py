"""The official FireRedASR2 model code (PyPI fasr-asr-firered==0.5.8, package `fireredasr2`) for parity tests.

`fireredasr2/__init__.py` imports the LLM stack (transformers, peft, ...), so the package is
registered here as a bare package pointing at its directory and only the model modules
load. `models/fireredasr_aed.py` imports torchaudio, for timestamps only; no torchaudio
wheel matches torch 2.13 (PyPI's newest is 2.11.1), so a stand-in module is registered whose
`functional.forced_align` is the official package's own CTC Viterbi aligner (`CTC.ctc_align`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _forced_align(log_probs, targets, blank: int = 0):
    """torchaudio.functional.forced_align's interface: (1, T, V), (1, L) -> (alignment (1, T), scores (1, T)).

    Like torchaudio it refuses targets that cannot fit: L tokens plus one blank between each
    repeated pair need T >= L + repeats (the official caller then reports no timestamps).
    """
    from fireredasr2.models.module.ctc import CTC

    y = targets[0]
    repeats = int((y[1:] == y[:-1]).sum())
    if log_probs.size(1) < y.numel() + repeats:
        raise RuntimeError(f"targets length is too long for CTC: T {log_probs.size(1)} < L {y.numel()} + repeats {repeats}")
    path = CTC.ctc_align(log_probs[0], targets[0].numpy(), blank_id=blank)
    alignment = torch.tensor([int(t) for t in path]).unsqueeze(0)
    return alignment, log_probs[0].gather(1, alignment.T).T


def _stand_in_torchaudio() -> None:
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        return
    module = types.ModuleType("torchaudio")
    module.functional = types.SimpleNamespace(forced_align=_forced_align)
    sys.modules["torchaudio"] = module


def official_aed_module():
    """fireredasr2.models.fireredasr_aed, imported without the package __init__; skips when not installed."""
    if "fireredasr2" not in sys.modules:
        spec = importlib.util.find_spec("fireredasr2")  # finds the package without running its __init__
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("fasr-asr-firered==0.5.8 (package fireredasr2) is not installed")
        package = types.ModuleType("fireredasr2")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["fireredasr2"] = package
    _stand_in_torchaudio()
    return importlib.import_module("fireredasr2.models.fireredasr_aed")


def official_model_v2(ckpt_dir: Path):
    """The official FireRedAsrAed (with its CTC head) loaded from an official-format checkpoint directory."""
    aed = official_aed_module()
    package = torch.load(Path(ckpt_dir) / "model.pth.tar", map_location="cpu", weights_only=False)
    model = aed.FireRedAsrAed.from_args(package["args"])
    model.load_state_dict(package["model_state_dict"], strict=True)
    # One intra-op thread: on a busy 2-core machine torch's spinning pool made the official
    # decode of two utterances take 3.4 s of CPU instead of 0.08 s (measured).
    torch.set_num_threads(1)
    return model.eval()
