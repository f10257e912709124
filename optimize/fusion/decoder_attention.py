"""Decoder step: self- and cross-attention -> com.microsoft MultiHeadAttention.

The exported step (DecoderStepGraph in optimize/export/exporter.py) computes, per layer,

    self:   k_i = Where(pos == offset, k_new, k_cache[i])     (N, S, H, Dk), BSNH
            out = softmax(Q·k_iᵀ / √Dk + self_bias) · v_i     self_bias (1, 1, 1, S): 0 up to offset, -inf after
    cross:  out = softmax(Q·Kᵀ / √Dk + cross_attn_mask) · V   K, V = n_layer_cross_k/v[i] (N, T', D)

Both become MultiHeadAttention(query (N, 1, D), key, value (N, Tk, D), attention_bias):
the cache written by Where is the full-length key, viewed as (N, S, D) by a free Reshape,
and the -inf entries of self_bias remove the positions after `offset` exactly as before.
The cache layout, the Where write and the graph outputs are untouched.

MultiHeadAttention needs attention_bias with its last dim equal to the key length, while
`cross_attn_mask` defaults to a (1, 1, 1, 1) initializer that the original Add broadcast.
An overridable bias is therefore expanded to (.., .., 1, Tk) once per key-length source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from optimize.fusion.graph_edit import Edit, GraphView, NoMatch
from optimize.fusion.sdpa import BHDS, BHSD, Fused, Sdpa, heads_of, insert_mha, match_sdpa, to_3d


@dataclass(frozen=True)
class DotProductMatch:
    core: Sdpa
    role: str  # "decoder_self" (keys computed from the query's input) or "decoder_cross"
    query: str  # (N, 1, D), projection bias included
    key_4d: str  # (N, Tk, H, Dk)
    heads: int
    head_dim: int


def plan(view: GraphView, edit: Edit, softmax: onnx.NodeProto) -> Fused:
    """Match one decoder attention at `softmax` and plan its rewrite; raise NoMatch if it is not one."""
    match = match_dot_product(view, softmax)
    return Fused(match.role, softmax, rewrite(edit, match))


def match_dot_product(view: GraphView, softmax: onnx.NodeProto) -> DotProductMatch:
    core = match_sdpa(view, softmax)
    qk = view.producer.get(core.scores)
    if qk is None or qk.op_type != "MatMul":
        raise NoMatch(f"{softmax.name}: scores are not a plain Q·Kᵀ MatMul")
    q4 = view.transpose(qk, 0, BHSD).input[0]
    key_4d = view.transpose(qk, 1, BHDS).input[0]
    q_reshape = view.producer.get(q4)
    if q_reshape is None or q_reshape.op_type != "Reshape":
        raise NoMatch(f"{q4}: query heads are not a Reshape of the projection")
    heads, head_dim = heads_of(view, q_reshape)
    query = q_reshape.input[0]
    role = "decoder_self" if view.depends_on(key_4d, _projection_input(view, query)) else "decoder_cross"
    return DotProductMatch(core, role, query, key_4d, heads, head_dim)


def _projection_input(view: GraphView, query: str) -> str:
    """The hidden state the query was projected from: x in Add(MatMul(x, W), b) or MatMul(x, W).

    Self-attention keys are computed from the same x; cross-attention keys are not.
    """
    node = view.producer.get(query)
    if node is not None and node.op_type == "Add":
        node = next((view.producer[i] for i in node.input if i in view.producer and view.producer[i].op_type == "MatMul"), None)
    return node.input[0] if node is not None and node.op_type == "MatMul" else query


def rewrite(edit: Edit, m: DotProductMatch) -> str:
    """Plan the MultiHeadAttention node for `m`; returns its name."""
    prefix = f"{m.core.softmax.name.rsplit('/', 1)[0]}/{m.role}"
    before, d_model = m.core.output_node, m.heads * m.head_dim
    key = to_3d(edit, m.key_4d, d_model, before, prefix)
    value = to_3d(edit, m.core.value_4d, d_model, before, prefix)
    attention_bias = _attention_bias(edit, m.core.bias, key, before, prefix)
    return insert_mha(edit, m.core, prefix, (m.query, key, value), "", attention_bias, m.heads)


def _attention_bias(edit: Edit, bias: str, key: str, before: onnx.NodeProto, prefix: str) -> str:
    """`bias` as a valid MHA attention_bias, or "" when it is a constant zero.

    A bias computed in the graph (self_bias) is used as it is: the decoder builds it
    with the key length last. One a caller may feed (cross_attn_mask, default
    (1, 1, 1, 1)) or a constant is expanded to the key length; the expansion is shared
    by all layers whose keys take their length from the same tensor axis.
    """
    view = edit.view
    value = view.constant(bias)
    if value is not None and not np.any(value):
        return ""
    if value is None and bias not in view.graph_inputs:
        return bias
    source, axis = _key_length_source(view, key)
    cache_key = ("expanded", bias, source, axis)
    if cache_key not in edit.memo:
        length = edit.unique(f"{prefix}/key_length")
        shape_node = helper.make_node("Shape", [source], [length], name=edit.unique(f"{prefix}/KeyLength"), start=axis, end=axis + 1)
        target = edit.unique(f"{prefix}/bias_shape")
        ones = edit.const([1, 1, 1], np.int64)
        concat = helper.make_node("Concat", [ones, length], [target], name=edit.unique(f"{prefix}/BiasShape"), axis=0)
        expanded = edit.unique(f"{bias}_expanded")
        expand = helper.make_node("Expand", [bias, target], [expanded], name=edit.unique(f"{prefix}/ExpandBias"))
        for node in (shape_node, concat, expand):
            edit.insert(before, node)
        edit.memo[cache_key] = expanded
    return edit.memo[cache_key]


def _key_length_source(view: GraphView, key: str) -> tuple[str, int]:
    """(tensor, axis) holding the key length: axis 2 of the stacked per-layer input a Gather picks from, else axis 1."""
    node = view.producer.get(key)
    if node is not None and node.op_type == "Gather" and view.attr(node, "axis", 0) == 0:
        index = view.constant(node.input[1])
        if index is not None and index.ndim == 0:
            return node.input[0], 2
    return key, 1
