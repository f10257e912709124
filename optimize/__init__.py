"""optimize: export FireRedASR AED to split ONNX, optimize it for ONNX Runtime, and prove accuracy held.

The Python API (README, "Python API"); names load on first use, so `import optimize` stays light:

    Recognizer(model_dir, DecodeConfig(...))  transcribe paths or arrays; transcribe_long cuts long audio
    run(recipe, ...)                          a recipe's staged pipeline; returns the report
    evaluate_pair(model_dir, data, ...)       the pipeline's checks on any pair
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Recognizer": "optimize.runtime.recognizer",
    "Hypothesis": "optimize.runtime.recognizer",
    "Segment": "optimize.runtime.recognizer",
    "Transcript": "optimize.runtime.recognizer",
    "DecodeConfig": "optimize.runtime.search",
    "VadConfig": "optimize.runtime.vad",
    "OptimizeError": "optimize.errors",
    "GateFailure": "optimize.errors",
    "load_recipe": "optimize.recipe",
    "run": "optimize.api",
    "evaluate_pair": "optimize.api",  # not `evaluate`: that name is the optimize.evaluate package
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'optimize' has no attribute {name!r}")
