"""The official FireRedASR2 model code (PyPI fasr-asr-firered==0.5.8, package `fireredasr2`) for parity tests.

`fireredasr2/__init__.py` imports the LLM stack (transformers, peft, ...), so the package is
registered here as a bare package pointing at its directory and only the model modules
load. `models/fireredasr_aed.py` imports torchaudio, for timestamps only; no torchaudio
wheel matches torch 2.13 (PyPI's newest is 2.11.1), so a stand-in module is registered whose
`functional.forced_align` transcribes torchaudio's CPU kernel (see _forced_align).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _forced_align(log_probs, targets, blank: int = 0):
    """torchaudio.functional.forced_align for batch 1: (1, T, V), (1, L) -> (alignment (1, T), log_probs).

    A line-by-line transcription of torchaudio's CPU kernel
    (pytorch/audio src/libtorchaudio/forced_align/cpu/compute.cpp, forced_align_impl): the
    same windowed Viterbi, float32 sums, and tie rules (a skip only when strictly better than
    both, the previous state only when strictly better than staying, the final blank unless
    the last token is strictly better). Like torchaudio it refuses T < L + repeats.
    The official package's own CTC.ctc_align is not used: its s - 1 at s = 0 wraps to the
    last state (Python's index -1), which lets a path leave the end and start again.
    """
    lp, y = log_probs[0].float().numpy(), [int(v) for v in targets[0]]
    t_len, n = lp.shape[0], len(y)
    s_len = 2 * n + 1
    repeats = sum(y[i] == y[i - 1] for i in range(1, n))
    if t_len < n + repeats:
        raise RuntimeError(f"targets length is too long for CTC. Found log_probs length: {t_len}, targets length: {n}, and number of repeats: {repeats}")
    neg = np.float32(-np.inf)
    alphas = np.full((2, s_len), neg, dtype=np.float32)
    back = np.full((t_len, s_len), -1, dtype=np.int64)
    start = 0 if t_len - (n + repeats) > 0 else 1
    end = 1 if s_len == 1 else 2
    for i in range(start, end):
        alphas[0, i] = lp[0, blank if i % 2 == 0 else y[i // 2]]
    for t in range(1, t_len):
        if t_len - t <= n + repeats:
            if start % 2 == 1 and y[start // 2] != y[start // 2 + 1]:
                start += 1
            start += 1
        if t <= n + repeats:
            if end % 2 == 0 and end < 2 * n and y[end // 2 - 1] != y[end // 2]:
                end += 1
            end += 1
        startloop, cur, prev = start, t % 2, (t - 1) % 2
        alphas[cur, :] = neg
        if start == 0:
            alphas[cur, 0] = alphas[prev, 0] + lp[t, blank]
            back[t, 0] = 0
            startloop += 1
        for i in range(startloop, end):
            x0, x1, x2 = alphas[prev, i], alphas[prev, i - 1], neg
            if i % 2 != 0 and i != 1 and y[i // 2] != y[i // 2 - 1]:
                x2 = alphas[prev, i - 2]
            if x2 > x1 and x2 > x0:
                result, back[t, i] = x2, 2
            elif x1 > x0:
                result, back[t, i] = x1, 1
            else:
                result, back[t, i] = x0, 0
            alphas[cur, i] = result + lp[t, blank if i % 2 == 0 else y[i // 2]]
    last = (t_len - 1) % 2
    state = s_len - 1 if alphas[last, s_len - 1] > alphas[last, s_len - 2] else s_len - 2
    path = np.zeros(t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        path[t] = blank if state % 2 == 0 else y[state // 2]
        state -= back[t, state]
    return torch.from_numpy(path).unsqueeze(0), log_probs


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


def official_asr_v2(model_dir: Path, **config):
    """fireredasr2.asr.FireRedAsr2 ("aed") on the CPU, the official end-to-end API (features, search, timestamps).

    asr.py also imports the LLM modules, which import transformers at module level; only names
    are needed there, so stand-ins for the three it imports are registered when transformers is absent.
    """
    official_aed_module()
    if "transformers" not in sys.modules and importlib.util.find_spec("transformers") is None:
        stand_in = types.ModuleType("transformers")
        stand_in.AutoModelForCausalLM = stand_in.AutoTokenizer = None  # used only by the LLM path
        pt_utils = types.ModuleType("transformers.trainer_pt_utils")
        pt_utils.LabelSmoother = types.SimpleNamespace(ignore_index=-100)  # read at import by llm_tokenizer
        stand_in.trainer_pt_utils = pt_utils
        sys.modules.update({"transformers": stand_in, "transformers.trainer_pt_utils": pt_utils})
    asr = importlib.import_module("fireredasr2.asr")
    torch.set_num_threads(1)  # see official_model_v2
    return asr.FireRedAsr2.from_pretrained("aed", str(model_dir), asr.FireRedAsr2Config(use_gpu=False, **config))
