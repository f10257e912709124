"""The decoder graph our runtime runs: the pair's decoder with its per-step copies taken out.

The published contract stacks every layer's cross K/V in one input, shape = (L, N, T', D),
and the exported step picks layer i with Gather(axis 0, i). ONNX Runtime turns those
Gathers into one Split that copies all of it on every step (41 MB per row at AED-L size
and 10 s of audio), and a beam search has to repeat each utterance's cross K/V once per
beam (N = utterances x beams), so a beam-3 step copies and reads three times as much.
Cross K/V do not change during a search; only the queries do.

The contract also returns both self-caches whole, shape = (L, N, S, H, Dh), written by one
Where at `offset`: every step reads and writes all of both (at batch 16 x beam 3 and 64
steps, 0.5 GB per step at AED-L size) to change one position.

`rewrite_decoder` rewrites the loaded decoder in memory (the file stays as published,
so sherpa-onnx still runs it):
- each Gather(n_layer_cross_k/v, i) becomes a graph input `n_layer_cross_k.i`, which the
  runtime feeds as a view of layer i of the encoder's output (no copy anywhere);
- where every cross-attention is a fused MultiHeadAttention (the pipeline's `fuse` stage),
  the rows of one utterance become the query positions of one attention against that
  utterance's cross K/V: query (N x B, 1, D) -> (N, B, D), output back to (N x B, 1, D),
  the key bias expanded to (N, 1, B, T'). Each utterance's cross K/V is then held once,
  however many beams search it. Self-attention and the caches keep one row per beam;
- where each cache output is Where(position == offset, new K/V, input cache), the output
  becomes the new K/V alone, shape = (L, N, 1, H, Dh), which the runtime writes into its
  cache at `offset` in place (OrtPair.decoder_step).

All are exact: the same kernels see the same numbers (tests/test_decoder_graph.py checks
logits and caches against the unmodified graph, greedy, beam 3 and batch 2 x beam 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimize import contract
from optimize.graph import fresh_name

_CROSS = tuple(name for name, _ in contract.DECODER_INPUTS[3:5])  # n_layer_cross_k, n_layer_cross_v
_MHA_KEY, _MHA_VALUE, _MHA_BIAS = 1, 2, 5  # MultiHeadAttention input slots


_CACHE_IN = tuple(name for name, _ in contract.DECODER_INPUTS[1:3])  # in_n_layer_self_k/v_cache
_CACHE_OUT = tuple(name for name, _ in contract.DECODER_OUTPUTS[1:3])  # out_n_layer_self_k/v_cache


@dataclass(frozen=True)
class DecoderLayout:
    """How a rewritten decoder takes its cross K/V and returns its caches."""

    layers: int  # per-layer inputs `n_layer_cross_k.i` / `n_layer_cross_v.i`, i < layers
    per_utterance: bool  # True: cross K/V and mask have one row per utterance, not per decoder row
    appends_kv: bool  # True: the cache outputs are the step's new K/V, shape = (L, N, 1, H, Dh)
    # per-layer cross K/V layout: None = (U, T', D) views of the stacked input; H = (U, H, T', Dh),
    # the heads-first layout MultiHeadAttention otherwise makes from (U, T', D) on every step
    heads_first: int | None = None


def layer_input(stacked: str, layer: int) -> str:
    """The per-layer input name for layer `layer` of `stacked` (n_layer_cross_k or n_layer_cross_v)."""
    return f"{stacked}.{layer}"


def rewrite_decoder(model: onnx.ModelProto) -> DecoderLayout | None:
    """Rewrite `model` in place as the module docstring says; None (model untouched) when its graph does not fit.

    It fits when every consumer of the stacked cross K/V, other than Shape, is a Gather on
    axis 0 with a constant scalar index; the grouping and the cache outputs are rewritten
    where their own patterns hold.
    """
    graph = model.graph
    consts = {t.name: t for t in graph.initializer} | {
        n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    picks = _layer_picks(graph, consts)
    if picks is None:
        return None
    layers = 1 + max(i for _, i in picks.values())
    if sorted(picks.values()) != sorted((s, i) for s in _CROSS for i in range(layers)):
        return None
    stacked_info = {i.name: i for i in graph.input if i.name in _CROSS}
    nodes = list(graph.node)
    renamed = {nodes[k].output[0]: layer_input(*where) for k, where in picks.items()}
    kept = [n for k, n in enumerate(nodes) if k not in picks]
    for node in kept:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    for stacked, layer in sorted(set(picks.values())):
        shape = [d.dim_param or d.dim_value for d in stacked_info[stacked].type.tensor_type.shape.dim][1:]
        graph.input.append(helper.make_tensor_value_info(layer_input(stacked, layer), TensorProto.FLOAT, shape or None))
    per_utterance = _group_rows(graph, set(renamed.values()))
    heads = _heads_first(graph, set(renamed.values())) if per_utterance else None
    return DecoderLayout(layers, per_utterance, _new_kv_outputs(graph), heads)


def _heads_first(graph: onnx.GraphProto, layer_inputs: set[str]) -> int | None:
    """Declare the per-layer inputs (U, H, T', Dh) when every consumer is a MultiHeadAttention of one head count.

    MultiHeadAttention takes a 4-D key/value as heads-first (BNSH) as it is; a 3-D (U, T', D)
    one it transposes into that layout on every run, though cross K/V never change in a search.
    """
    heads = {a.i for n in graph.node if n.op_type == "MultiHeadAttention" and set(n.input) & layer_inputs
             for a in n.attribute if a.name == "num_heads"}  # fmt: skip
    if len(heads) != 1:
        return None
    (h,) = heads
    infos = [info for info in graph.input if info.name in layer_inputs]
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        if len(dims) != 3 or dims[2].dim_value <= 0 or dims[2].dim_value % h:
            return None
    for info in infos:
        u, t, d = (dim.dim_param or dim.dim_value for dim in info.type.tensor_type.shape.dim)
        info.type.tensor_type.ClearField("shape")
        for value in (u, h, t, d // h):
            dim = info.type.tensor_type.shape.dim.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
    return h


def _new_kv_outputs(graph: onnx.GraphProto) -> bool:
    """Make both cache outputs the new K/V where each is Where(cond, new, its input cache); False (untouched) otherwise."""
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    wheres = [producer.get(name) for name in _CACHE_OUT]
    if any(k is None or nodes[k].op_type != "Where" or nodes[k].input[2] != cache for k, cache in zip(wheres, _CACHE_IN)):
        return False
    if sum(name in n.input for n in nodes for name in _CACHE_OUT):
        return False  # a cache output also read inside the graph
    for k, name in zip(wheres, _CACHE_OUT):
        nodes[k] = helper.make_node("Identity", [nodes[k].input[1]], [name], name=nodes[k].name)
    for out in graph.output:
        if out.name in _CACHE_OUT:
            dims = out.type.tensor_type.shape.dim
            if len(dims) == 5:
                dims[2].Clear()
                dims[2].dim_value = 1
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _layer_picks(graph: onnx.GraphProto, consts: dict) -> dict[int, tuple[str, int]] | None:
    """index of the Gather node -> (stacked input, layer) for every consumer of the stacked cross K/V; None when one is not such a Gather."""
    picks = {}
    for k, node in enumerate(graph.node):
        stacked = [name for name in node.input if name in _CROSS]
        if not stacked or node.op_type == "Shape":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        index = consts.get(node.input[1]) if node.op_type == "Gather" and len(node.input) > 1 else None
        if node.op_type != "Gather" or node.input[0] not in _CROSS or axis != 0 or index is None:
            return None
        value = numpy_helper.to_array(index)
        if value.ndim != 0:
            return None
        picks[k] = (node.input[0], int(value))
    return picks or None


def _group_rows(graph: onnx.GraphProto, layer_inputs: set[str]) -> bool:
    """Make every cross-attention MultiHeadAttention attend per utterance; False (graph untouched) unless all consumers are MHA K/V slots."""
    nodes = list(graph.node)  # protobuf hands out a new wrapper per access: nodes are known by index
    users = [(k, slot) for k, node in enumerate(nodes) for slot, name in enumerate(node.input) if name in layer_inputs]
    if not users or any(nodes[k].op_type != "MultiHeadAttention" or slot not in (_MHA_KEY, _MHA_VALUE) for k, slot in users):
        return False
    widths = {k: _width(graph, nodes[k]) for k, _ in users}
    if None in widths.values():
        return False
    names = _Names(graph)
    bias_memo: dict[str, str] = {}
    new_nodes = []
    for k, node in enumerate(nodes):
        new_nodes += _grouped(node, names, bias_memo, widths[k]) if k in widths else [node]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return True


def _width(graph: onnx.GraphProto, mha: onnx.NodeProto) -> int | None:
    """D of the layer-input key (N, T', D) of `mha`, from its graph input's static last dim."""
    key = mha.input[_MHA_KEY]
    info = next((i for i in graph.input if i.name == key), None)
    dims = info.type.tensor_type.shape.dim if info is not None else []
    return dims[-1].dim_value if dims and dims[-1].dim_value > 0 else None


class _Names:
    """Fresh value/node names that collide with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.used = {name for n in graph.node for name in (*n.input, *n.output, n.name)} | {i.name for i in graph.input}
        self.used |= {t.name for t in graph.initializer}

    def fresh(self, base: str) -> str:
        return fresh_name(base, self.used)


def _const(names: _Names, base: str, values: list[int]) -> tuple[str, onnx.NodeProto]:
    out = names.fresh(base)
    return out, helper.make_node("Constant", [], [out], name=names.fresh(f"{base}/Constant"), value=numpy_helper.from_array(np.array(values, dtype=np.int64), out))


def _grouped(mha: onnx.NodeProto, names: _Names, bias_memo: dict[str, str], d_model: int) -> list[onnx.NodeProto]:
    """`mha` with its rows grouped by utterance: the nodes that replace it, in order.

    query (N x B, 1, D) -> (N, B, D) with N from the key's rows; attention_bias (N or 1, 1, 1, T')
    -> (N or 1, 1, B, T'); output (N, B, D) -> (N x B, 1, D) under the original output name.
    """
    p = f"{mha.name}/per_utterance"
    nodes = []
    rows = names.fresh(f"{p}/utterances")
    nodes.append(helper.make_node("Shape", [mha.input[_MHA_KEY]], [rows], name=names.fresh(f"{p}/Utterances"), start=0, end=1))
    tail, c = _const(names, f"{p}/beams_width", [-1, d_model])
    nodes.append(c)
    shape = names.fresh(f"{p}/query_shape")
    nodes.append(helper.make_node("Concat", [rows, tail], [shape], name=names.fresh(f"{p}/QueryShape"), axis=0))
    query = names.fresh(f"{p}/query")
    nodes.append(helper.make_node("Reshape", [mha.input[0], shape], [query], name=names.fresh(f"{p}/GroupQuery")))
    inputs = list(mha.input)
    inputs[0] = query
    if len(inputs) > _MHA_BIAS and inputs[_MHA_BIAS]:
        inputs[_MHA_BIAS] = _bias(inputs[_MHA_BIAS], query, names, bias_memo, nodes, p)
    grouped_out = names.fresh(f"{p}/output")
    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    nodes.append(helper.make_node("MultiHeadAttention", inputs, [grouped_out], name=mha.name, domain=mha.domain, **attrs))
    back, c = _const(names, f"{p}/row_shape", [-1, 1, d_model])
    nodes.append(c)
    nodes.append(helper.make_node("Reshape", [grouped_out, back], [mha.output[0]], name=names.fresh(f"{p}/UngroupOutput")))
    return nodes


def _bias(bias: str, query: str, names: _Names, memo: dict[str, str], nodes: list, p: str) -> str:
    """The bias (N or 1, 1, 1, T') expanded to (N or 1, 1, B, T'), B = the grouped query's dim 1; once per bias."""
    if bias in memo:
        return memo[bias]
    beams = names.fresh(f"{p}/beams")
    nodes.append(helper.make_node("Shape", [query], [beams], name=names.fresh(f"{p}/Beams"), start=1, end=2))
    ones, c = _const(names, f"{p}/ones", [1, 1])
    nodes.append(c)
    last, c = _const(names, f"{p}/one", [1])
    nodes.append(c)
    target = names.fresh(f"{p}/bias_shape")
    nodes.append(helper.make_node("Concat", [ones, beams, last], [target], name=names.fresh(f"{p}/BiasShape"), axis=0))
    out = names.fresh(f"{bias}_per_utterance")
    nodes.append(helper.make_node("Expand", [bias, target], [out], name=names.fresh(f"{p}/ExpandBias")))
    memo[bias] = out
    return out
