"""What the weight-only stages share: MatMul weights to n-bit blocks (com.microsoft MatMulNBits).

`int8_weight_only` and `int4_weight_only` differ only in the bit width and their defaults.
The body here quantizes the graphs a config names with ORT's MatMulNBitsQuantizer (it
imports the `onnx-ir` package), and checks the host's M = 1 kernel on the first quantized
weight of each graph: onnxruntime #29853 (4-bit with zero points, AVX2 without AVX-512)
computes a decoder step with about 46% error while every M > 1 shape is right, so a graph
that passes a batched check can still decode wrongly one row at a time.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optimize import graph
from optimize.errors import OptimizeError
from optimize.stages import GRAPHS, TOOL_ERRORS, StageOutput, sensitivity, transform_pair

# M = 1 output vs the dequantized weights' float product: activations are rounded to int8
# per block at accuracy_level 4 (about 1% here), the #29853 failure is about 46%
MAX_M1_ERROR = 0.05


def quantizer():
    """ORT's (DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer); OptimizeError without onnx-ir."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError as e:
        raise OptimizeError(f"onnxruntime's MatMulNBitsQuantizer cannot be imported ({e})", "pip install onnx-ir") from e
    return DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


# what the MatMuls that nodes_to_exclude leaves out become: float, or dynamic int8 as the int8 stage
EXCLUDED_AS = ("float", "int8")


def check_config(stage: str, block_size: int, accuracy_level: int, graphs: tuple[str, ...], excluded_as: str = "float",
                 excluded_budget: float = 0.0, calibration_samples: int = 1) -> None:  # fmt: skip
    """The checks both weight-only configs make, with the stage's name in the message."""
    sensitivity.check_config(f"{stage}.excluded_budget", excluded_budget, f"{stage}.calibration_samples", calibration_samples, 0.4)
    if excluded_as not in EXCLUDED_AS:
        raise OptimizeError(f"{stage}.excluded_as is {excluded_as!r}", f"use one of {', '.join(EXCLUDED_AS)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise OptimizeError(f"{stage}.block_size is {block_size}", "use a power of two >= 16, e.g. 32")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise OptimizeError(f"{stage}.accuracy_level is {accuracy_level}", "use 0..4 (4 = int8 compute on CPU)")
    if not graphs or set(graphs) - set(GRAPHS):
        raise OptimizeError(f"{stage}.graphs is {list(graphs)}", f"name one or both of {', '.join(GRAPHS)}")


def run_pair(src: Path, dst: Path, stage: str, bits: int, cfg) -> StageOutput:
    """Quantize the graphs in `cfg.graphs` of `src` into `dst` (the others are copied)."""
    src = Path(src)
    names = [n.name for f in GRAPHS.values() for n in graph.load(src / f, load_external=False).graph.node]
    for p in cfg.nodes_to_exclude:
        if not fnmatch.filter(names, p):
            raise OptimizeError(f"{stage}.nodes_to_exclude pattern {p!r} matches no node", "use node names as in the stage's input graphs")
    quantizer()  # fail before writing anything when onnx-ir is missing
    record: dict = {}
    chosen: dict[str, list[str]] = {}
    if cfg.excluded_budget:
        chosen, record["sensitivity"] = _sensitive(src, bits, cfg)
    before, after, notes = transform_pair(src, dst, stage, _transform(stage, bits, cfg, record, chosen), cfg)
    for role in after:
        record[role]["MatMulNBits"] = after[role].get("MatMulNBits", 0)
    if not any(after[r].get("MatMulNBits", 0) for r in cfg.graphs):
        notes += ("no MatMul had a constant weight to quantize",)
    if cfg.excluded_budget:
        what = f"left {{n}} MatMul(s) out of {bits}-bit as {cfg.excluded_as}"
        notes += (sensitivity.note(record["sensitivity"], chosen, what, "the weights", f"{bits}-bit"),)
    return StageOutput(before, after, notes, record)


def _sensitive(src: Path, bits: int, cfg) -> tuple[dict[str, list[str]], dict]:
    """The MatMuls that n-bit blocks move the pair's outputs most, within cfg.excluded_budget of the weights (optimize.stages.sensitivity)."""
    # accuracy_level 4 rounds each input block to int8; the probe rounds the input per tensor (coarser: an upper bound)
    rounding = sensitivity.Rounding(bits, block_size=cfg.block_size, quantize_input=cfg.accuracy_level == 4)
    return sensitivity.select(src, cfg.graphs, cfg.nodes_to_exclude, rounding, cfg.calibration, cfg.calibration_samples, cfg.excluded_budget)


def _transform(stage: str, bits: int, cfg, record: dict, chosen: dict[str, list[str]]):
    def transform(src: Path, out: Path, role: str) -> list[str]:
        if role not in cfg.graphs:
            record[role] = {"excluded_nodes": f"all (not in {stage}.graphs)"}
            for f in graph.files_of(src):
                shutil.copyfile(f, out.parent / f.name)
            return [f"{role} kept as it was ({stage}.graphs)"]
        algo_class, quantizer_class = quantizer()
        model = graph.load(src)
        excluded = [n.name for n in model.graph.node if any(fnmatch.fnmatch(n.name, p) for p in cfg.nodes_to_exclude)] + chosen.get(role, [])
        kwargs = dict(block_size=cfg.block_size, is_symmetric=cfg.is_symmetric, accuracy_level=cfg.accuracy_level, bits=bits)
        try:
            q = quantizer_class(model, nodes_to_exclude=excluded, algo_config=algo_class(**kwargs), **kwargs)
            q.process()
        except TOOL_ERRORS as e:  # the tool cannot handle this graph (stages.TOOL_ERRORS)
            raise OptimizeError(f"MatMulNBits quantization failed on the {role}: {str(e).splitlines()[0][:300]}", f"exclude the failing node with {stage}.nodes_to_exclude") from e
        result = q.model.model
        m1 = m1_error(result)
        record[role] = {"excluded_nodes": excluded, "m1_error": m1}
        if m1 is not None and m1 > MAX_M1_ERROR:
            raise OptimizeError(
                f"{stage}: this CPU's MatMulNBits M=1 kernel is off by {m1:.0%} on the {role} (onnxruntime #29853)",
                f"set {stage}.is_symmetric: true (no zero points), or use int8",
            )
        if cfg.excluded_as == "int8":
            others = [n.name for n in result.graph.node if n.op_type == "MatMul" and n.name in excluded]
            result = _dynamic_int8(result, others, out.parent / f"{out.stem}.int8-scratch.onnx")
            record[role]["int8_nodes"] = others
        graph.save(result, out)
        return []

    return transform


def _dynamic_int8(model: onnx.ModelProto, nodes: list[str], scratch: Path) -> onnx.ModelProto:
    """`nodes` (MatMuls with a constant weight) to dynamic int8, per-channel, as the int8 stage does."""
    if not nodes:
        return model
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from optimize.host import cpu_flags
    from optimize.stages.int8 import resolve_reduce_range

    try:
        quantize_dynamic(model, scratch, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                         reduce_range=resolve_reduce_range("auto", cpu_flags()), nodes_to_quantize=nodes,
                         extra_options={"MatMulConstBOnly": True})  # fmt: skip
        return graph.load(scratch)
    except TOOL_ERRORS as e:
        raise OptimizeError(f"dynamic int8 of the excluded MatMuls failed: {str(e).splitlines()[0][:300]}", "set excluded_as: float") from e
    finally:
        scratch.unlink(missing_ok=True)


def m1_error(model: onnx.ModelProto, k_rows: int = 1) -> float | None:
    """Relative error of the host's MatMulNBits at M = 1 on the first such node of `model`.

    The reference is x @ W' in float64, W' = the node's dequantized weights, so the figure
    measures the kernel, not the quantization. None when the graph has no MatMulNBits.
    """
    import onnxruntime as ort

    node = next((n for n in model.graph.node if n.op_type == "MatMulNBits"), None)
    if node is None:
        return None
    inits = {t.name: t for t in model.graph.initializer if t.name in node.input}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weights = {name: numpy_helper.to_array(inits[name]) for name in node.input[1:] if name in inits}
    w = dequantize(weights[node.input[1]], weights[node.input[2]], weights.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None, attrs)
    one = helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft", **attrs)
    k = attrs["K"]
    g = helper.make_graph([one], "m1", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [k_rows, k])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [k_rows, attrs["N"]])],
                          [inits[n] for n in node.input[1:] if n in inits])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((k_rows, k)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64)
    got = sess.run(None, {"x": x})[0]
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def dequantize(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, attrs: dict) -> np.ndarray:
    """The float weights a MatMulNBits node stands for, shape = (K, N), float32.

    packed: uint8, shape = (N, blocks, block_size x bits / 8), low nibble first for 4 bits.
    scales: shape = (N x blocks,) or (N, blocks). zero_points: packed like the weights
    (one per block), or None for the symmetric midpoint 2^(bits-1).
    """
    k, n, bits, bs = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    blocks = -(-k // bs)
    q = packed.reshape(n, blocks, -1)
    if bits == 4:
        q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(n, blocks, bs)
    zp = np.full((n, blocks), 1 << (bits - 1), dtype=np.float32)
    if zero_points is not None:
        z = zero_points.reshape(n, -1)
        if bits == 4:
            z = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)
        zp = z[:, :blocks].astype(np.float32)
    w = (q.astype(np.float32) - zp[..., None]) * scales.reshape(n, blocks)[..., None].astype(np.float32)
    return w.reshape(n, blocks * bs)[:, :k].T
