"""Encoder: FireRedASR's relative-position MHSA -> com.microsoft MultiHeadAttention.

The exported block (RelPosMultiHeadAttention in optimize/export/model.py) computes, per layer,

    q, k, v = (LN_q(x) Wq, LN_k(x) Wk, LN_v(x) Wv) split into H heads    (no projection biases)
    ac = (q + u) · kᵀ        bd = rel_shift((q + v_pos) · pᵀ),  p = linear_pos(pos_emb)
    out = softmax(scale · (ac + bd) + mask) · v                         mask: (N, 1, 1, T), 0 / -inf

MultiHeadAttention scales only Q·Kᵀ, so the rewrite is

    MHA(query = q, key = k, value = v, bias = [u, 0, 0],
        attention_bias = rel_shift((q + v_pos) · (scale · p)ᵀ) + mask,   num_heads = H, scale = scale)

`u` rides in the query bias; the scale moves onto p, which is (1, H, Dk, 2T-1) and so the
cheapest place for it (rel_shift only pads with zeros and reshapes, so scaling commutes
with it). The LayerNorms, the projections and the positional branch stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from optimize.fusion.graph_edit import Edit, GraphView, NoMatch
from optimize.fusion.sdpa import BHDS, BHSD, Fused, Sdpa, heads_of, insert_mha, match_sdpa, split_heads_input

# Ops the rel_shift chain between the positional MatMul and `bd` may consist of: all move
# or zero-pad values, so multiplying before them equals multiplying after. 8 is the chain
# length with slack (Concat, Reshape, Slice, Reshape, Slice in the export).
_SHIFT_OPS = ("Concat", "Reshape", "Slice", "Pad")
_SHIFT_MAX_DEPTH = 8


@dataclass(frozen=True)
class RelPosMatch:
    core: Sdpa
    qkv: tuple[str, str, str]  # (N, T, D) query, key, value projections
    pos_bias_u: np.ndarray  # (H, Dk), added to q for the content term
    heads: int
    bd: str  # rel-shifted positional scores (N, H, T, T), not yet scaled
    bd_matmul: onnx.NodeProto  # (q + v_pos) · pᵀ; its input 1 gets the scale


def plan(view: GraphView, edit: Edit, softmax: onnx.NodeProto) -> Fused:
    """Match one encoder attention at `softmax` and plan its rewrite; raise NoMatch if it is not one."""
    match = match_rel_pos(view, softmax)
    return Fused("encoder_self", softmax, rewrite(edit, match))


def match_rel_pos(view: GraphView, softmax: onnx.NodeProto) -> RelPosMatch:
    core = match_sdpa(view, softmax)
    add = view.producer.get(core.scores)
    if add is None or add.op_type != "Add":
        raise NoMatch(f"{softmax.name}: scores are not a sum ac + bd")
    errors = []
    for i in (0, 1):
        try:
            return _match_terms(view, core, ac=add.input[i], bd=add.input[1 - i])
        except NoMatch as e:
            errors.append(str(e))
    raise NoMatch("; ".join(errors))


def _match_terms(view: GraphView, core: Sdpa, ac: str, bd: str) -> RelPosMatch:
    ac_node = view.producer.get(ac)
    if ac_node is None or ac_node.op_type != "MatMul":
        raise NoMatch(f"{ac}: content term is not a MatMul")
    q4, pos_bias_u = _biased_query(view, view.transpose(ac_node, 0, BHSD))
    k4 = view.transpose(ac_node, 1, BHDS).input[0]
    bd_matmul = _shift_source(view, bd, 0)
    q4_v, _ = _biased_query(view, view.transpose(bd_matmul, 0, BHSD))
    if q4_v != q4:
        raise NoMatch(f"{bd_matmul.name}: positional term uses another query than the content term")
    q_reshape = view.producer.get(q4)
    if q_reshape is None or q_reshape.op_type != "Reshape":
        raise NoMatch(f"{q4}: query heads are not a Reshape of the projection")
    heads, head_dim = heads_of(view, q_reshape)
    if pos_bias_u.shape != (heads, head_dim):
        raise NoMatch(f"pos_bias_u shape {pos_bias_u.shape} is not (H, Dk) = {(heads, head_dim)}")
    k3, v3 = split_heads_input(view, k4), split_heads_input(view, core.value_4d)
    if k3 is None or v3 is None:
        raise NoMatch(f"{core.softmax.name}: key or value heads are not a Reshape of a projection")
    return RelPosMatch(core, (q_reshape.input[0], k3, v3), pos_bias_u, heads, bd, bd_matmul)


def _biased_query(view: GraphView, transpose: onnx.NodeProto) -> tuple[str, np.ndarray]:
    """Transpose(Add(q4, bias)) -> (q4, bias) with bias an (H, Dk) constant."""
    add = view.parent(transpose, 0, "Add")
    for i in (0, 1):
        bias = view.constant(add.input[1 - i])
        if bias is not None and bias.ndim == 2:
            return add.input[i], bias.astype(np.float32)
    raise NoMatch(f"{add.name}: no (H, Dk) constant pos_bias operand")


def _shift_source(view: GraphView, name: str, depth: int) -> onnx.NodeProto:
    """The MatMul that the rel_shift chain ending in `name` starts from."""
    node = view.producer.get(name)
    if node is None or depth > _SHIFT_MAX_DEPTH:
        raise NoMatch(f"{name}: no positional MatMul within {_SHIFT_MAX_DEPTH} rel_shift steps")
    if node.op_type == "MatMul":
        return node
    if node.op_type not in _SHIFT_OPS:
        raise NoMatch(f"{node.name}: {node.op_type} in the rel_shift chain does not commute with scaling")
    data = [i for i in node.input[: 1 if node.op_type != "Concat" else None] if i and not _is_zeros(view, i)]
    if len(data) != 1 or (node.op_type == "Pad" and not _zero_pad(view, node)):
        raise NoMatch(f"{node.name}: rel_shift step mixes in non-zero values")
    return _shift_source(view, data[0], depth + 1)


def _is_zeros(view: GraphView, name: str) -> bool:
    """True for a tensor known to be all zeros: a zero constant or ConstantOfShape of 0."""
    value = view.constant(name)
    if value is not None:
        return not np.any(value)
    node = view.producer.get(name)
    if node is None or node.op_type != "ConstantOfShape":
        return False
    fill = view.attr(node, "value")
    return fill is None or not np.any(onnx.numpy_helper.to_array(fill))


def _zero_pad(view: GraphView, pad: onnx.NodeProto) -> bool:
    mode = view.attr(pad, "mode", b"constant")
    return mode in (b"constant", "constant") and (len(pad.input) < 3 or not pad.input[2] or _is_zeros(view, pad.input[2]))


def rewrite(edit: Edit, m: RelPosMatch) -> str:
    """Plan the MultiHeadAttention node for `m`; returns its name."""
    prefix = m.core.softmax.name.rsplit("/", 1)[0] or "encoder_attention"
    scale = edit.const(np.float32(m.core.scale), np.float32)
    p_in = m.bd_matmul.input[1]
    scaled_p = edit.unique(f"{prefix}/pos_scaled")
    edit.insert(m.bd_matmul, helper.make_node("Mul", [p_in, scale], [scaled_p], name=edit.unique(f"{prefix}/PosScale")))
    edit.redirect[(id(m.bd_matmul), 1)] = scaled_p
    attention_bias = m.bd  # (N, H, T, T); the key padding mask (N, 1, 1, T) is added when there is one
    if m.core.bias:
        attention_bias = edit.unique(f"{prefix}/attention_bias")
        add = helper.make_node("Add", [m.bd, m.core.bias], [attention_bias], name=edit.unique(f"{prefix}/AttentionBias"))
        edit.insert(m.core.output_node, add)
    d_model = m.pos_bias_u.size
    qkv_bias = np.concatenate([m.pos_bias_u.reshape(-1), np.zeros(2 * d_model, np.float32)])
    bias = edit.const_tensor(f"{prefix}/qkv_bias", qkv_bias)
    return insert_mha(edit, m.core, prefix, m.qkv, bias, attention_bias, m.heads)
