"""A read-only index over an ONNX graph and a planned edit applied to it in one step.

The fusion passes first *plan* every rewrite against the untouched graph (GraphView,
Edit), then apply all of them at once (commit). Nothing in the proto changes while
patterns are being matched, so a pass either applies its complete plan or nothing.

New nodes are inserted right before an existing node whose inputs they may depend on
(the original graph is topologically sorted, so this keeps it sorted without a global
sort, which is quadratic in ORT's OnnxModel). Dead nodes are then removed, but only
nodes that were live before the edit: a pass never cleans up what it did not make dead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from optimize.graph import fresh_name

MS_DOMAIN = "com.microsoft"
_CONSTANT_LISTS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}


class NoMatch(Exception):
    """A pattern did not match; the message says where (it goes into the report's `skipped`)."""


class GraphView:
    """Producers, consumers and constants of a graph, computed once."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input}
        self.graph_outputs = {v.name for v in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a Constant node or a plain initializer; None for anything a caller can feed.

        An initializer that is also a graph input (cross_attn_mask) is overridable, so it is no constant.
        """
        if name in self.initializers and name not in self.graph_inputs:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is None or node.op_type != "Constant" or len(node.attribute) != 1:
            return None
        attr = node.attribute[0]
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in _CONSTANT_LISTS:  # value_float(s) / value_int(s), as some simplifiers write them
            return np.asarray(onnx.helper.get_attribute_value(attr), dtype=_CONSTANT_LISTS[attr.name])
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def parent(self, node: onnx.NodeProto, index: int, op_type: str) -> onnx.NodeProto:
        """The producer of `node.input[index]`, which must be an `op_type` node."""
        if index >= len(node.input) or node.input[index] not in self.producer:
            raise NoMatch(f"{node.name or node.op_type}: input {index} has no producer (wanted {op_type})")
        found = self.producer[node.input[index]]
        if found.op_type != op_type:
            raise NoMatch(f"{node.name or node.op_type}: input {index} comes from {found.op_type}, not {op_type}")
        return found

    def only_consumer(self, name: str, op_type: str, ignore: tuple[str, ...] = ("Shape",)) -> onnx.NodeProto:
        """The one `op_type` consumer of `name`; consumers in `ignore` (shape queries) are allowed besides it."""
        found = [n for n in self.consumers.get(name, []) if n.op_type not in ignore]
        if len(found) != 1 or found[0].op_type != op_type:
            raise NoMatch(f"{name} feeds {[n.op_type for n in found]}, not one {op_type}")
        return found[0]

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def transpose(self, node: onnx.NodeProto, index: int, perm: tuple[int, ...]) -> onnx.NodeProto:
        """The Transpose producing `node.input[index]`, which must use `perm`."""
        found = self.parent(node, index, "Transpose")
        if tuple(self.attr(found, "perm", ())) != perm:
            raise NoMatch(f"{found.name}: perm {self.attr(found, 'perm')} is not {list(perm)}")
        return found

    def depends_on(self, name: str, target: str) -> bool:
        """True if computing `name` reads `target` (walks producers up to the graph inputs)."""
        seen, stack = set(), [name]
        while stack:
            current = stack.pop()
            if current == target:
                return True
            node = self.producer.get(current)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack += [i for i in node.input if i]
        return False

    def used_names(self) -> set[str]:
        names = set(self.producer) | set(self.initializers) | self.graph_inputs
        return names | {n.name for n in self.graph.node}


@dataclass
class Edit:
    """Planned changes: nodes to insert, inputs to redirect, nodes whose outputs new nodes take over."""

    view: GraphView
    insert_before: dict[int, list[onnx.NodeProto]] = field(default_factory=lambda: defaultdict(list))
    redirect: dict[tuple[int, int], str] = field(default_factory=dict)  # (id(node), input index) -> new name
    replaced: set[int] = field(default_factory=set)  # id() of nodes whose outputs a new node now produces
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    memo: dict = field(default_factory=dict)  # helper tensors a pass shares between matches, by its own key
    _taken: set[str] = field(default_factory=set)

    def __post_init__(self):
        self._taken = self.view.used_names()

    def unique(self, name: str) -> str:
        """`name`, suffixed if a node, tensor or earlier planned name already uses it."""
        return fresh_name(name, self._taken)

    def const(self, values, dtype) -> str:
        """A small initializer holding `values`, shared by every match that needs the same one."""
        array = np.asarray(values, dtype=dtype)
        assert array.size <= 8, "const() names the tensor by its values: use const_tensor for data"
        key = f"fusion/{array.dtype.name}_{'_'.join(f'{v:g}' for v in array.reshape(-1))}"
        for name, tensor in self.initializers.items():
            if name.startswith(key) and np.array_equal(numpy_helper.to_array(tensor), array):
                return name
        return self.const_tensor(key, array)

    def const_tensor(self, name: str, array: np.ndarray) -> str:
        """A new initializer named after `name` (made unique)."""
        name = self.unique(name)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def insert(self, before: onnx.NodeProto, node: onnx.NodeProto) -> str:
        self.insert_before[id(before)].append(node)
        return node.output[0]

    def node_list(self) -> list[onnx.NodeProto]:
        """The edited node order: planned nodes before their anchors, replaced nodes left out."""
        out = []
        for node in self.view.graph.node:
            out += self.insert_before.get(id(node), [])
            if id(node) not in self.replaced:
                out.append(node)
        return out

    def inputs(self, node: onnx.NodeProto) -> list[str]:
        return [self.redirect.get((id(node), i), name) for i, name in enumerate(node.input)]


def live_ids(nodes: list[onnx.NodeProto], inputs_of, outputs: set[str]) -> set[int]:
    """id() of the nodes that some graph output depends on."""
    producer = {name: n for n in nodes for name in n.output if name}
    live, stack = set(), [producer[o] for o in outputs if o in producer]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        stack += [producer[i] for i in inputs_of(node) if i in producer]
    return live


def commit(edit: Edit, nodes: list[onnx.NodeProto]) -> tuple[int, int]:
    """Write `nodes` (from edit.node_list) into the graph, drop what became dead; return (removed, added)."""
    view, graph = edit.view, edit.view.graph
    was_live = live_ids(list(graph.node), lambda n: n.input, view.graph_outputs)
    now_live = live_ids(nodes, edit.inputs, view.graph_outputs)
    original = {id(n) for n in graph.node}
    kept = [n for n in nodes if id(n) in now_live or (id(n) in original and id(n) not in was_live)]
    for node in kept:
        for i, name in enumerate(edit.inputs(node)):
            node.input[i] = name
    kept_ids = {id(n) for n in kept}
    removed = len(original - kept_ids)
    added = len(kept_ids - original)
    used_before = {i for n in graph.node for i in n.input}
    used_after = {i for n in kept for i in n.input}
    graph.ClearField("node")
    graph.node.extend(kept)
    graph.initializer.extend(t for name, t in edit.initializers.items() if name in used_after)
    orphaned = [t for t in graph.initializer if t.name in used_before - used_after and t.name not in view.graph_inputs]
    for tensor in orphaned:
        graph.initializer.remove(tensor)
    return removed, added


def ensure_ms_opset(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft domain the fused nodes live in."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
