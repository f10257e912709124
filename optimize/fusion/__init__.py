"""FireRedASR attention fusion: every attention layer -> one com.microsoft MultiHeadAttention.

ORT's own fusions find no attention in FireRedASR (shared/reference/ort-toolchain.md, E1-E3):
the encoder's relative-position attention and the decoder's Where-written KV cache match
none of its patterns. These passes match FireRedASR's graphs as `optimize export` writes
them (also after onnxsim or ORT's opt_level-0 fusions) and rewrite them:

    encoder_attention.py   rel-pos MHSA: pos_bias_u in the query bias, scale·bd + mask as attention_bias
    decoder_attention.py   self-attention over the full cache and cross-attention over n_layer_cross_k/v

`fuse_attention` edits the given ModelProto in place (a 1.1B-parameter graph is not
copied) and returns what it did. It plans every rewrite before changing anything, so
the proto is either fully rewritten or untouched. It never changes graph inputs,
outputs or metadata_props. A pass that finds nothing reports `fused == 0`; it is the
caller's job to show that, as nothing is raised.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import onnx

from optimize.errors import OptimizeError
from optimize.fusion import decoder_attention, encoder_attention
from optimize.fusion.graph_edit import Edit, GraphView, NoMatch, commit, ensure_ms_opset, live_ids

PASSES = {"encoder": encoder_attention.plan, "decoder": decoder_attention.plan}


@dataclass(frozen=True)
class LayerFusion:
    """One attention that became a MultiHeadAttention node."""

    role: str  # "encoder_self", "decoder_self" or "decoder_cross"
    layer: int  # 0-based index among the attentions of this role, in graph order
    node: str  # name of the MultiHeadAttention node
    replaced: str  # name of the Softmax node at the heart of what it replaced


@dataclass(frozen=True)
class FusionReport:
    """What `fuse_attention` did to one graph."""

    kind: str  # "encoder" or "decoder"
    candidates: int  # Softmax nodes examined (one per attention in an unfused graph)
    fused: int  # attentions rewritten to MultiHeadAttention; 0 means the pass was a no-op
    nodes_removed: int  # nodes gone from the graph, including the dead shape arithmetic
    nodes_added: int  # new nodes: MultiHeadAttention plus its bias and reshape helpers
    layers: tuple[LayerFusion, ...]  # one entry per fused attention, in graph order
    skipped: tuple[tuple[str, str], ...]  # (Softmax node, why it was not fused)

    @property
    def by_role(self) -> dict[str, int]:
        return dict(Counter(layer.role for layer in self.layers))

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"by_role": self.by_role}


def fuse_attention(model: onnx.ModelProto, kind: str) -> FusionReport:
    """Rewrite the attention layers of an encoder or decoder graph in place; see the module docstring."""
    if kind not in PASSES:
        raise OptimizeError(f"unknown attention fusion kind {kind!r}", f"use one of {', '.join(PASSES)}")
    view = GraphView(model.graph)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    excluded: dict[int, str] = {}
    while True:
        edit, fused, skipped = _plan(view, PASSES[kind], softmaxes, excluded)
        nodes = edit.node_list()
        live = live_ids(nodes, edit.inputs, view.graph_outputs)
        shared = [f for f in fused if id(f.softmax) in live]
        if not shared:
            break
        # A probability tensor something else reads (e.g. an exported attention map) must
        # stay; fusing around it would compute the attention twice. Re-plan without it.
        excluded.update((id(f.softmax), "its attention probabilities have other consumers") for f in shared)
    removed = added = 0
    if fused:
        ensure_ms_opset(model)
        removed, added = commit(edit, nodes)
    return FusionReport(kind, len(softmaxes), len(fused), removed, added, _layers(fused), tuple(skipped))


def _plan(view: GraphView, plan, softmaxes, excluded: dict[int, str]):
    edit, fused, skipped = Edit(view), [], []
    for softmax in softmaxes:
        if id(softmax) in excluded:
            skipped.append((softmax.name, excluded[id(softmax)]))
            continue
        try:
            fused.append(plan(view, edit, softmax))
        except NoMatch as e:
            skipped.append((softmax.name, str(e)))
    return edit, fused, skipped


def _layers(fused) -> tuple[LayerFusion, ...]:
    seen: Counter = Counter()
    out = []
    for f in fused:
        out.append(LayerFusion(f.role, seen[f.role], f.node, f.softmax.name))
        seen[f.role] += 1
    return tuple(out)
