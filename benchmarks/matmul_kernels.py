"""The CPU MatMul kernels behind the int8 / int4 choices, at AED-L decoder shapes, one process.

    python benchmarks/matmul_kernels.py --threads 2

A chain of --layers feed-forward blocks (1280 -> 5120 -> 1280, random N(0, 0.03) weights,
the AED-L decoder's FFN shapes) is written as fp32 MatMuls, quantized four ways and timed
at M rows (1 = a greedy step, 3 = beam 3, 16 = a batch, 250 = 10 s of encoder frames):
  fp32      MatMul
  dyn-int8  quantize_dynamic (QInt8 per-channel weights; DynamicQuantizeMatMul at load)
  nbits-8   MatMulNBits 8-bit symmetric blocks of 32, accuracy_level 4
  nbits-4   MatMulNBits 4-bit symmetric blocks of 32, accuracy_level 4 (int4_weight_only)
and the relative error of each against fp32 at every M. Timings are medians after a warm-up.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

D, FF = 1280, 5120


def chain(layers: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        for name, shape in ((f"w{i}", (D, FF)), (f"v{i}", (FF, D))):
            inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.03).astype(np.float32), name))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"/ffn{i}/w1/MatMul"),
                  helper.make_node("MatMul", [f"h{i}", f"v{i}"], [f"y{i}"], name=f"/ffn{i}/w2/MatMul")]  # fmt: skip
        prev = f"y{i}"
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["M", D])],
                          [helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, ["M", D])], inits)  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def variants(layers: int, work: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from optimize.stages import nbits

    paths = {"fp32": work / "fp32.onnx", "dyn-int8": work / "dyn.onnx"}
    onnx.save(chain(layers), paths["fp32"])
    quantize_dynamic(paths["fp32"], paths["dyn-int8"], weight_type=QuantType.QInt8, per_channel=True)
    algo_class, quantizer_class = nbits.quantizer()
    for bits in (8, 4):
        kwargs = dict(block_size=32, is_symmetric=True, accuracy_level=4, bits=bits)
        q = quantizer_class(onnx.load(paths["fp32"]), algo_config=algo_class(**kwargs), **kwargs)
        q.process()
        paths[f"nbits-{bits}"] = work / f"nbits{bits}.onnx"
        onnx.save(q.model.model, paths[f"nbits-{bits}"])
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=8, help="feed-forward blocks (2 MatMuls each)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 3, 16, 250], help="M values")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers log every node
    with tempfile.TemporaryDirectory() as tmp:
        paths = variants(args.layers, Path(tmp))
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = args.threads, 3
        sessions = {k: ort.InferenceSession(str(v), so, providers=["CPUExecutionProvider"]) for k, v in paths.items()}
        print(f"onnxruntime {ort.__version__}, {args.threads} threads, {args.layers} x (1280x5120, 5120x1280); ms (relative error vs fp32)")
        print("| M | " + " | ".join(sessions) + " |\n|---|" + "---|" * len(sessions))
        for m in args.rows:
            x = {"x": np.random.default_rng(1).standard_normal((m, D)).astype(np.float32)}
            ref = sessions["fp32"].run(None, x)[0]
            cells = []
            for s in sessions.values():
                y = s.run(None, x)[0]
                spent = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    s.run(None, x)
                    spent.append(time.perf_counter() - start)
                err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
                cells.append(f"{1e3 * statistics.median(spent):.2f} ({err:.3f})")
            print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
