"""One-node helper graphs that run next to the pair on its provider's device.

The IOBinding path (optimize.runtime.binding) uses them to replicate and reorder cache
rows and to make zeroed caches without a host round trip; the CUDA start check
(optimize.runtime.providers.check_cuda) loads the zeros graph as its probe.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

# Opset 17 / IR 8 like the exported pair: every ORT release that runs the pair runs these.
_OPSET, _IR_VERSION = 17, 8


def _floats(*names: str) -> list[onnx.ValueInfoProto]:
    """float32 graph values of open rank."""
    return [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]


def gather_rows_model() -> onnx.ModelProto:
    """Gather on axis 1 of two tensors at once: k, v shape = (d0, N, ...), float32, rows shape = (R,), int64.

    Returns k[:, rows], v[:, rows], each shape = (d0, R, ...). Axis 1 is the row axis of the
    caches (L, N, S, H, Dh) and of cross K/V (L, N, T', D), which always move in K/V pairs:
    one run per pair halves the launches. The rank is left open so one graph serves both.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", [name, "rows"], [f"{name}_rows"], axis=1) for name in ("k", "v")],
        "gather_rows",
        _floats("k", "v") + [helper.make_tensor_value_info("rows", TensorProto.INT64, ["R"])],
        _floats("k_rows", "v_rows"),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)


def zeros_model() -> onnx.ModelProto:
    """shape (k,), int64 -> float32 zeros of that shape (ConstantOfShape's default value is 0.0f).

    Fresh caches must be zero, not just allocated: the masked positions get softmax
    weight 0, and 0 x NaN from uninitialized memory would still be NaN.
    """
    node = helper.make_node("ConstantOfShape", ["shape"], ["zeros"])
    graph = helper.make_graph(
        [node],
        "zeros",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, ["k"])],
        _floats("zeros"),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION)
