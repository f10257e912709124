"""Lift the weights out of a published sherpa-onnx pair into the official checkpoint format.

The published FireRedASR graphs were made by the TorchScript `torch.onnx.export` of the
official modules (published-onnx-contract.md section 11). Such an export keeps the
module path in every node name (`/decoder/layer_stack.0/self_attn/w_qs/MatMul`) and in
the names of the initializers used as they are (biases, LayerNorm, Conv, Embedding,
pos_bias_u/v); a Linear weight used by a 3-D MatMul is stored transposed under a
generated name (`onnx::MatMul_123`), and the tied output projection is stored a second
time, transposed. The encoder's cross-attention K/V projections are found by data flow
from its outputs instead (a wrapper calls them outside the module hierarchy).

Every weight of the checkpoint must be found, with its exact shape; otherwise the lift
stops with one line naming what is missing. `reexport` (optimize/stages/reexport.py)
then runs `optimize export` on the lifted checkpoint and proves numerically that the new
pair computes what the published one does.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from optimize import contract, graph
from optimize.errors import OptimizeError
from optimize.export.checkpoint import save_checkpoint
from optimize.export.model import AbsPositionalEncoding, AedDims, FireRedAsrAed, RelPositionalEncoding

_LINEAR_OPS = ("MatMul", "Gemm")
_MODULE_FIX = "lifting needs a TorchScript export of the official modules (node names like /decoder/layer_stack.0/self_attn/w_qs/MatMul); start from the official checkpoint with `optimize export` instead"


@dataclass(frozen=True)
class Lifted:
    """What a published pair holds, in the official checkpoint's terms."""

    dims: AedDims
    state: dict[str, np.ndarray]  # official state-dict key -> float32 array
    cmvn_mean: np.ndarray  # shape = (idim,), float64
    cmvn_inv_stddev: np.ndarray  # shape = (idim,), float64
    tokens_text: str  # tokens.txt as published ("symbol id" per line)
    metadata: dict[str, str]  # the encoder's metadata_props, verbatim


def module_path(node_name: str) -> str:
    """`/encoder/layer_stack.0/ffn1/net/net.1/MatMul` -> `encoder.layer_stack.0.ffn1.net.1`.

    The exporter names a Sequential's child `net/net.1`: a segment that extends the one
    before it (`net` -> `net.1`) replaces it.
    """
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def _suffix_match(name: str, known: set[str]) -> str | None:
    """The longest dotted suffix of `name` that is in `known` (a wrapper may prefix the paths)."""
    parts = name.split(".")
    for i in range(len(parts)):
        candidate = ".".join(parts[i:])
        if candidate in known:
            return candidate
    return None


class _Graph:
    """One loaded graph: initializers as arrays, producers, node module paths."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {out: node for node in model.graph.node for out in node.output}
        constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self.constants = constants

    def array(self, name: str) -> np.ndarray | None:
        """An initializer (or Constant node) as float32, None when `name` is computed."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name]).astype(np.float32)
        node = self.constants.get(name)
        if node is not None:
            return numpy_helper.to_array(node.attribute[0].t).astype(np.float32)
        return None

    def weight_input(self, name: str) -> np.ndarray | None:
        """An initializer input, seen through a Cast (fp16 graphs) or Transpose."""
        arr = self.array(name)
        if arr is not None:
            return arr
        node = self.producer.get(name)
        if node is not None and node.op_type in ("Cast", "Identity"):  # Identity: a shared (deduplicated) weight
            return self.weight_input(node.input[0])
        if node is not None and node.op_type == "Transpose":
            inner = self.weight_input(node.input[0])
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            return None if inner is None else np.transpose(inner, perm[0] if perm else None)
        return None


def _linear_weight(g: _Graph, node: onnx.NodeProto) -> np.ndarray | None:
    """The (out, in) weight of a Linear exported as MatMul (x @ W^T) or Gemm."""
    if node.op_type == "MatMul":
        w = g.weight_input(node.input[1])
        return None if w is None or w.ndim != 2 else w.T
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    w = g.weight_input(node.input[1])
    return None if w is None else (w if trans_b else w.T)


def _cross_projections(g: _Graph, output: str, layers: int) -> list[tuple[np.ndarray, np.ndarray | None]] | None:
    """Per decoder layer, the Linear feeding `output` = stack of per-layer projections (Concat of Unsqueeze).

    returns [(weight (out, in), bias (out,) or None)] in layer order, None if the graph is not of that form.
    """
    node = g.producer.get(output)
    while node is not None and node.op_type in ("Identity", "Reshape", "Cast"):
        node = g.producer.get(node.input[0])
    if node is None or node.op_type != "Concat" or len(node.input) != layers:
        return None
    found = []
    for name in node.input:
        inner, bias = g.producer.get(name), None
        while inner is not None and inner.op_type in ("Unsqueeze", "Reshape", "Identity", "Cast", "Add"):
            if inner.op_type == "Add":  # x @ W^T + b: the bias is the constant operand
                consts = [g.weight_input(i) for i in inner.input]
                bias = next((c for c in consts if c is not None), None)
                inner = g.producer.get(next(i for i, c in zip(inner.input, consts) if c is None))
            else:
                inner = g.producer.get(inner.input[0])
        w = _linear_weight(g, inner) if inner is not None and inner.op_type in _LINEAR_OPS else None
        if w is None:
            return None
        found.append((w, bias))
    return found


def _infer_dims(enc: _Graph, dec: _Graph, meta: dict[str, str], tokens: list[str], where: Path) -> AedDims:
    fields = contract.parse_metadata(meta, str(where / contract.ENCODER_FILE))
    layer_ids = {int(m.group(1)) for n in enc.model.graph.node for m in [re.search(r"encoder/layer_stack\.(\d+)/", n.name)] if m}
    layer_ids |= {int(m.group(1)) for name in enc.inits for m in [re.search(r"encoder\.layer_stack\.(\d+)\.", name)] if m}
    depthwise = [t for name, t in enc.inits.items() if name.endswith("conv.depthwise_conv.weight")]
    emb = [t for name, t in dec.inits.items() if name.endswith("tgt_word_emb.weight")]
    if not layer_ids or not depthwise or not emb:
        raise OptimizeError(f"{where}: the graphs carry no module paths (no encoder.layer_stack.N, depthwise_conv, tgt_word_emb names)", _MODULE_FIX)
    pe = [t for name, t in dec.inits.items() if name.endswith("decoder.positional_encoding.pe")]
    x_dims = enc.model.graph.input[0].type.tensor_type.shape.dim
    d_model = fields["num_head"] * fields["head_dim"]  # type: ignore[operator]
    pad = tokens.index("<pad>") if "<pad>" in tokens else 2
    return AedDims(
        idim=x_dims[2].dim_value or 80, odim=int(emb[0].dims[0]), d_model=d_model, n_head=fields["num_head"],  # type: ignore[arg-type]
        n_layers_enc=max(layer_ids) + 1, n_layers_dec=fields["num_decoder_layers"], kernel_size=int(depthwise[0].dims[-1]),  # type: ignore[arg-type]
        pe_maxlen=int(pe[0].dims[1]) if pe else 5000, sos_id=fields["sos"], eos_id=fields["eos"], pad_id=pad,  # type: ignore[arg-type]
    )  # fmt: skip


def _read_tokens(path: Path, vocab: int | None) -> tuple[str, list[str]]:
    """tokens.txt ("symbol id" per line, ids 0..V-1 in order); OptimizeError if it does not fit the graphs."""
    text = path.read_text(encoding="utf-8")
    symbols = []
    for i, line in enumerate(text.splitlines()):
        parts = line.rsplit(" ", 1)
        if len(parts) != 2 or parts[1] != str(i):
            raise OptimizeError(f"{path} line {i + 1} is {line!r}, not `symbol {i}`", "use the tokens.txt that came with these graphs")
        symbols.append(parts[0])
    if vocab is not None and len(symbols) != vocab:
        raise OptimizeError(f"{path} has {len(symbols)} symbols, the decoder's vocabulary is {vocab}", "use the tokens.txt that came with these graphs")
    return text, symbols


def _collect(g: _Graph, expected: dict[str, tuple[int, ...]], state: dict[str, np.ndarray]) -> None:
    """Fill `state` from `g`, by the module path of the node that uses each weight.

    A node's own path decides where an initializer belongs, not the initializer's name:
    the exporter shares one initializer between modules whose values are equal (a fresh
    LayerNorm's ones and zeros), under the first module's name. Linear weights stored
    transposed under generated names are read from their MatMul/Gemm. Initializers
    named by key that no node path claims (a table indexed from the parent) come last.
    """
    known = set(expected)
    modules = {k.rsplit(".", 1)[0] for k in known}
    for node in g.model.graph.node:
        module = _suffix_match(module_path(node.name), modules)
        if module is None:
            continue
        if node.op_type in _LINEAR_OPS and module + ".weight" in known and module + ".weight" not in state:
            w = _linear_weight(g, node)
            if w is not None:
                state[module + ".weight"] = w
        for name in node.input:
            key = _suffix_match(name, known)
            target = None if key is None else f"{module}.{key.rsplit('.', 1)[1]}"
            if target in known and target not in state:
                value = g.weight_input(name)
                if value is not None:
                    state[target] = value
    for name in g.inits:
        key = _suffix_match(name, known)
        if key is not None and key not in state:
            state[key] = g.array(name)  # type: ignore[assignment]


def lift(model_dir: Path) -> Lifted:
    """Read a published-style pair and return its weights under the official checkpoint's keys."""
    model_dir = Path(model_dir)
    enc_path, dec_path, tokens_path = contract.model_paths(model_dir)
    # structure first, from the graphs without their tensors; then the tensors graph by graph (AED-L: 3.1 + 1.8 GB)
    enc = _Graph(graph.load(enc_path, load_external=False))
    dec = _Graph(graph.load(dec_path, load_external=False))
    for path, g in ((enc_path, enc), (dec_path, dec)):
        q = graph.quantized_ops(g.model)
        if q:
            raise OptimizeError(
                f"{path} is already quantized ({', '.join(f'{n} {op}' for op, n in sorted(q.items()))})",
                "start from the published fp32 or fp16 files, or from the official checkpoint",
            )
    logits_dim = dec.model.graph.output[0].type.tensor_type.shape.dim
    vocab = logits_dim[2].dim_value if len(logits_dim) == 3 and logits_dim[2].dim_value else None
    tokens_text, symbols = _read_tokens(tokens_path, vocab)
    meta = dict(graph.metadata(enc.model))
    dims = _infer_dims(enc, dec, meta, symbols, model_dir)
    del enc, dec
    with torch.device("meta"):  # shapes only: no 4.4 GB of random weights at AED-L size
        expected = {k: tuple(v.shape) for k, v in FireRedAsrAed(dims).state_dict().items()}
    state: dict[str, np.ndarray] = {}
    enc = _Graph(graph.load(enc_path))
    _collect(enc, expected, state)
    for which, output in (("w_ks", contract.ENCODER_OUTPUTS[0][0]), ("w_vs", contract.ENCODER_OUTPUTS[1][0])):
        for i, (w, b) in enumerate(_cross_projections(enc, output, dims.n_layers_dec) or []):
            state.setdefault(f"decoder.layer_stack.{i}.cross_attn.{which}.weight", w)
            if b is not None:
                state.setdefault(f"decoder.layer_stack.{i}.cross_attn.{which}.bias", b)
    del enc
    _collect(_Graph(graph.load(dec_path)), expected, state)
    emb = state.get("decoder.tgt_word_emb.weight")
    prj = state.get("decoder.tgt_word_prj.weight")
    if emb is not None and prj is not None and not np.allclose(emb, prj, rtol=1e-3, atol=1e-6):
        raise OptimizeError(f"{dec_path}: the output projection differs from the token embedding", "FireRedASR ties them; these graphs are not a FireRedASR AED export")
    if emb is not None:
        state["decoder.tgt_word_prj.weight"] = emb
    tables = {"encoder.positional_encoding.pe": RelPositionalEncoding(dims.d_model).pe,
              "decoder.positional_encoding.pe": AbsPositionalEncoding(dims.d_model, dims.pe_maxlen).pe}  # fmt: skip
    for key, table in tables.items():
        # the sinusoid tables by formula: an fp16 graph stores them rounded (<= 5e-4 off)
        table = table.numpy()
        stored = state.get(key)
        if stored is not None and (stored.shape != table.shape or not np.allclose(stored, table, atol=2e-3)):
            raise OptimizeError(f"{model_dir}: {key} differs from the sinusoid formula", "these graphs are not a FireRedASR AED export")
        state[key] = table
    _check_complete(state, expected, model_dir)
    fields = contract.parse_metadata(meta, str(enc_path))
    return Lifted(dims, state, np.asarray(fields["cmvn_mean"]), np.asarray(fields["cmvn_inv_stddev"]), tokens_text, meta)


def _check_complete(state: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], where: Path) -> None:
    missing = sorted(set(expected) - set(state))
    if missing:
        raise OptimizeError(
            f"{where}: {len(missing)} of {len(expected)} weights have no module path in the graphs' node or initializer names "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
            _MODULE_FIX,
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise OptimizeError(f"{where}: {key} has shape {tuple(state[key].shape)}, the model needs {shape}", _MODULE_FIX)


def write_checkpoint(lifted: Lifted, out_dir: Path) -> Path:
    """The official layout: model.pth.tar, cmvn.ark, dict.txt (stats with count 1 reproduce mean and inv_std)."""
    with torch.device("meta"):  # the lifted arrays become the parameters (assign): no second copy
        model = FireRedAsrAed(lifted.dims)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in lifted.state.items()}, strict=True, assign=True)
    lifted.state.clear()
    mean = lifted.cmvn_mean
    stats = np.zeros((2, len(mean) + 1))
    stats[0, :-1], stats[0, -1] = mean, 1.0
    stats[1, :-1] = 1.0 / lifted.cmvn_inv_stddev.astype(np.float64) ** 2 + mean**2
    tokens = tuple(line.rsplit(" ", 1)[0] for line in lifted.tokens_text.splitlines())
    save_checkpoint(out_dir, model, stats, tokens)
    return Path(out_dir)


def main() -> None:
    p = argparse.ArgumentParser(description="Lift a published sherpa-onnx FireRedASR pair into an official checkpoint directory")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    a = p.parse_args()
    try:
        print(write_checkpoint(lift(a.model_dir), a.out_dir))
    except OptimizeError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
