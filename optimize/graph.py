"""ONNX file I/O shared by the stages: load, save by size, metadata, op counts.

Everything works by path, so that the same code handles the tiny test pair and a
1.1B-parameter export whose weights exceed the 2 GB protobuf limit: such a model
is never serialized in memory (no SerializeToString, no in-memory check_model or
infer_shapes); it is written with its tensors in one `<name>.data` file beside it.
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from optimize.errors import OptimizeError

# Protobuf refuses messages over 2 GiB; keep a margin for the graph itself, the
# names and the attribute tensors that the weight estimate below leaves out.
PROTO_LIMIT_BYTES = int(1.8e9)
# Tensors smaller than this stay inline even in an external-data model (onnx default).
EXTERNAL_SIZE_THRESHOLD = 1024


def fresh_name(base: str, taken: set[str]) -> str:
    """`base`, suffixed `_1`, `_2`, ... until no name in `taken` has it; the result joins `taken`."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def load(path: Path, load_external: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (and its external data); raise OptimizeError if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise OptimizeError(f"{path} does not exist", "pass a directory holding encoder.onnx, decoder.onnx, tokens.txt")
    try:
        return onnx.load_model(str(path), load_external_data=load_external)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise OptimizeError(
            f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})",
            "the file is truncated or corrupt: re-export the pair",
        ) from e


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the graph's initializers, from their shapes (no serialization)."""
    total = 0
    for t in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
        total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the weights alone come close to the protobuf limit."""
    return tensor_bytes(model) > PROTO_LIMIT_BYTES


def data_file_name(path: Path) -> str:
    """The one external-data file a graph gets: `encoder.onnx` -> `encoder.onnx.data`."""
    return Path(path).name + ".data"


def release_memory() -> None:
    """Hand a finished graph's memory back before the next one is loaded.

    Graph editors (onnxruntime.transformers' OnnxModel) hold reference cycles, so a model
    outlives its last use until the cycle collector runs, and glibc keeps freed protobuf
    buffers in its arenas. At AED-L size the fp16 stage's encoder conversion (peak 10.3 GB)
    otherwise stayed resident (8.9 GB) under the decoder's (5.3 GB): a 16.3 GB stage.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the collector's work is all there is
        pass


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write `model` to `path`, with external data exactly when its size requires it.

    One `.data` file per graph (all_tensors_to_one_file) so that a pair stays three
    files plus at most two data files, which is what sherpa-onnx and our cache expect.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if needs_external_data(model):
        data = path.parent / data_file_name(path)
        data.unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=EXTERNAL_SIZE_THRESHOLD,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def external_files(path: Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """The external-data files an ONNX file refers to (read without loading tensors; `model`: `path` already loaded so)."""
    model = model if model is not None else load(path, load_external=False)
    names: list[str] = []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next(e.value for e in t.external_data if e.key == "location")
            if loc not in names:
                names.append(loc)
    files = [Path(path).parent / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise OptimizeError(f"{path} keeps its weights in {', '.join(missing)}, which is missing", f"copy the .data file(s) next to {Path(path).name}, as exported")
    return files


def files_of(path: Path) -> list[Path]:
    """An ONNX file followed by its external-data files."""
    return [Path(path), *external_files(path)]


def size_bytes(path: Path) -> int:
    """Size on disk of an ONNX file including its external data."""
    return sum(p.stat().st_size for p in files_of(path))


def sha256_files(paths: list[Path], chunk: int = 1 << 20) -> str:
    """One sha256 over the names and bytes of several files, streamed (never all in memory)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def metadata(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """metadata_props as an ordered list of (key, value)."""
    return [(p.key, p.value) for p in model.metadata_props]


def set_metadata(model: onnx.ModelProto, props: list[tuple[str, str]]) -> None:
    """Replace metadata_props with exactly `props`, in order.

    Tools add keys of their own (the quantizer's `onnx.infer`, onnxsim's reports) or drop
    them (external-data paths of the quantizer); the contract is the original list.
    """
    del model.metadata_props[:]
    for key, value in props:
        model.metadata_props.add(key=key, value=value)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type of the main graph, sorted by op type."""
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def io_signature(model: onnx.ModelProto) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """((name, elem_type) of graph inputs, of graph outputs), in graph order."""
    def sig(values):
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    return sig(model.graph.input), sig(model.graph.output)


def overridable_initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Graph inputs that also have an initializer (ORT: overridable initializers)."""
    inputs = {v.name for v in model.graph.input}
    return {t.name: t for t in model.graph.initializer if t.name in inputs}


def check(path: Path) -> None:
    """onnx.checker on the file (the path form also works above 2 GB)."""
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:  # type: ignore[attr-defined]
        raise OptimizeError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}", "this is a stage bug: report it with the model") from e


# Ops of an already-quantized graph (dynamic/static int8, QDQ, weight-only 4/8-bit).
QUANTIZED_OPS = frozenset({
    "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "QLinearMatMul",
    "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "MatMulNBits", "QAttention",
})  # fmt: skip


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of quantization ops in a graph (empty for a float graph)."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
