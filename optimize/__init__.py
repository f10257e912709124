"""optimize: export FireRedASR AED to split ONNX, optimize it for ONNX Runtime, and prove accuracy held."""

__version__ = "0.1.0"
