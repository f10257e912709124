"""The scaled-dot-product core every FireRedASR attention shares, and the fused node that replaces it.

Both graphs end an attention the same way (optimize/export/model.py):

    probs = Softmax(scale * scores + bias)            scores, bias: (N, H, Tq, Tk)
    out   = Reshape(Transpose(MatMul(probs, Transpose(V4, 0213)), 0213), (N, Tq, D))

and differ in `scores`: Q·Kᵀ in the decoder, Q·Kᵀ + rel_shift((Q + v)·Pᵀ) in the encoder.
`match_sdpa` finds this tail from the Softmax; the encoder and decoder passes match
their own `scores`. ORT's MultiHeadAttention computes softmax(scale·Q·Kᵀ + attention_bias)·V
(com.microsoft MultiHeadAttention, onnxruntime 1.32 contrib op schema), so each pass must
put everything except scale·Q·Kᵀ into `attention_bias`. Its shape rule, checked on the
1.32 CPU kernel: dims 0 and 1 may be 1 (broadcast over batch and heads), dims 2 and 3 must
equal the query and key lengths exactly; -inf entries are handled (softmax weight 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from optimize.fusion.graph_edit import MS_DOMAIN, Edit, GraphView, NoMatch

BHSD = (0, 2, 1, 3)  # (N, T, H, Dk) <-> (N, H, T, Dk)
BHDS = (0, 2, 3, 1)  # (N, T, H, Dk) -> (N, H, Dk, T): the transposed key


@dataclass(frozen=True)
class Sdpa:
    """The matched tail of one attention."""

    softmax: onnx.NodeProto
    scores: str  # what the scale multiplies, (N, H, Tq, Tk)
    scale: float  # Mul constant, or 1 / Div constant
    bias: str  # the additive term after scaling (mask or bias), broadcastable to (N, H, Tq, Tk); "" if none
    value_4d: str  # value as (N, Tk, H, Dk), before its Transpose
    output_node: onnx.NodeProto  # the Reshape producing (N, Tq, D); the fused node takes over its output


@dataclass(frozen=True)
class Fused:
    """What one planned fusion replaced, for the report."""

    role: str  # "encoder_self", "decoder_self" or "decoder_cross"
    softmax: onnx.NodeProto
    node: str  # name of the new MultiHeadAttention node


def match_sdpa(view: GraphView, softmax: onnx.NodeProto) -> Sdpa:
    """Match Softmax(scale * scores [+ bias]) -> MatMul(., V) -> Transpose -> Reshape; raise NoMatch."""
    if view.attr(softmax, "axis", -1) not in (-1, 3):
        raise NoMatch(f"{softmax.name}: softmax is not over the last axis")
    scores, scale, bias = _scaled_term(view, softmax.input[0])
    attend = view.only_consumer(softmax.output[0], "MatMul")
    if attend.input[0] != softmax.output[0]:
        raise NoMatch(f"{attend.name}: probabilities are not the left operand")
    value_4d = view.transpose(attend, 1, BHSD).input[0]
    back = view.only_consumer(attend.output[0], "Transpose")
    if tuple(view.attr(back, "perm", ())) != BHSD:
        raise NoMatch(f"{back.name}: output transpose perm is {view.attr(back, 'perm')}")
    output_node = view.only_consumer(back.output[0], "Reshape")
    return Sdpa(softmax, scores, scale, bias, value_4d, output_node)


def _scaled_term(view: GraphView, logits: str) -> tuple[str, float, str]:
    """Split the softmax input, Add(scale * scores, bias) in either order or scale * scores alone,
    into (scores, scale, bias); bias is "" when there is none."""
    node = view.producer.get(logits)
    scaled = _scaled(view, node)
    if scaled is not None:
        return (*scaled, "")
    if node is not None and node.op_type == "Add":
        for i in (0, 1):
            scaled = _scaled(view, view.producer.get(node.input[i]))
            if scaled is not None:
                return (*scaled, node.input[1 - i])
    raise NoMatch(f"{logits}: softmax input is not scores times a scalar constant (plus a bias)")


def _scaled(view: GraphView, node: onnx.NodeProto | None) -> tuple[str, float] | None:
    """(scores, scale) of Mul(scores, c), Mul(c, scores) or Div(scores, c); None for anything else."""
    if node is None or node.op_type not in ("Mul", "Div"):
        return None
    for j in (1, 0) if node.op_type == "Mul" else (1,):
        c = view.scalar(node.input[j])
        if c is not None and c != 0:
            return node.input[1 - j], (c if node.op_type == "Mul" else 1.0 / c)
    return None


def heads_of(view: GraphView, reshape: onnx.NodeProto) -> tuple[int, int]:
    """(H, Dk) of a Reshape to (N, T, H, Dk), whose shape is a constant or a Concat of 4 parts."""
    shape = view.constant(reshape.input[1])
    if shape is not None and shape.size == 4:
        h, dk = int(shape[2]), int(shape[3])
    else:
        concat = view.parent(reshape, 1, "Concat")
        parts = [view.constant(name) for name in concat.input]
        if len(parts) != 4 or parts[2] is None or parts[3] is None or parts[2].size != 1 or parts[3].size != 1:
            raise NoMatch(f"{reshape.name}: head split (.., H, Dk) is not constant")
        h, dk = int(parts[2].reshape(-1)[0]), int(parts[3].reshape(-1)[0])
    if h <= 0 or dk <= 0:
        raise NoMatch(f"{reshape.name}: head split H={h}, Dk={dk}")
    return h, dk


def split_heads_input(view: GraphView, name_4d: str) -> str | None:
    """The (N, T, D) tensor that a Reshape turned into `name_4d`, or None if it has no such producer."""
    node = view.producer.get(name_4d)
    return node.input[0] if node is not None and node.op_type == "Reshape" else None


def to_3d(edit: Edit, name_4d: str, d_model: int, before: onnx.NodeProto, prefix: str) -> str:
    """`name_4d` (N, T, H, Dk) as (N, T, D): the Reshape input if there is one, else a new Reshape."""
    found = split_heads_input(edit.view, name_4d)
    if found is not None:
        return found
    shape = edit.const([0, 0, d_model], np.int64)  # 0 copies N and T, so both stay dynamic
    out = edit.unique(f"{prefix}/{name_4d.strip('/').replace('/', '_')}_3d")
    return edit.insert(before, helper.make_node("Reshape", [name_4d, shape], [out], name=edit.unique(out + "/Reshape")))


def insert_mha(
    edit: Edit, core: Sdpa, prefix: str, qkv: tuple[str, str, str], bias: str, attention_bias: str, heads: int
) -> str:
    """Add MultiHeadAttention(q, k, v, bias, -, attention_bias) producing core's output; return its name.

    Only num_heads and scale are set: both are honoured by the CPU and CUDA kernels alike
    (mask_filter_value and unidirectional are not used here).
    """
    name = edit.unique(f"{prefix}/MultiHeadAttention")
    node = helper.make_node(
        "MultiHeadAttention",
        [*qkv, bias, "", attention_bias],
        [core.output_node.output[0]],
        name=name,
        domain=MS_DOMAIN,
        num_heads=heads,
        scale=float(core.scale),
    )
    edit.insert(core.output_node, node)
    edit.replaced.add(id(core.output_node))
    return name
