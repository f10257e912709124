"""Which int4 decoder set-up keeps the embedded default's greedy output: variants side by side.

    optimize run recipes/cpu_int8_int4dec.yaml              # once: its 2-fuse/ is the input here
    python benchmarks/int4_decoder_sweep.py runs/cpu_int8_int4dec/2-fuse work/int4sweep

Every variant is the fused pair's encoder through the int8 stage (dynamic, per-channel, as
cpu_int8.yaml) and its decoder through int4_weight_only with one setting changed; each is
then scored by `optimize eval VARIANT --reference artifacts/firered-aed-tiny --data
calibration/eval --recipe recipes/cpu_int8.yaml` (beam 1, 1 thread): the share of utterances
decoded to the same text as fp32, and the error-rate change in points. The issue's bar for a
shipped variant: >= 99% identical and <= +0.2 points. `mse-scales` is not a stage setting:
4-bit blocks whose scale is searched per block for the least squared error (instead of the
largest weight mapping to -8), written into the bs32 variant's MatMulNBits weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optimize.stages import int4_weight_only as int4
from optimize.stages import int8
from optimize.stages.nbits import dequantize

OTHERS = ("/w_*", "/fc*", "/tgt_word_prj/*")  # every decoder MatMul but the FFN's (our exporter's node names)
VARIANTS = {
    "bs32": {},  # the stage's defaults: symmetric, block 32, accuracy_level 4, the whole decoder
    "bs16": {"block_size": 16},
    "acc0": {"accuracy_level": 0},  # fp32 compute on the dequantized weights: no activation rounding
    "zero-points": {"is_symmetric": False},
    "prj-fp32": {"nodes_to_exclude": ("/tgt_word_prj/*",)},
    "prj-int8": {"nodes_to_exclude": ("/tgt_word_prj/*",), "excluded_as": "int8"},
    "ffn4-rest-int8": {"nodes_to_exclude": OTHERS, "excluded_as": "int8"},  # recipes/cpu_int8_int4dec.yaml
    "attn4-rest-int8": {"nodes_to_exclude": ("/mlp/*", "/tgt_word_prj/*"), "excluded_as": "int8"},
    "mse-scales": None,
}


def mse_scales(src: Path, reference: Path, out: Path, grid: int = 31) -> None:
    """`src`'s MatMulNBits weights re-rounded with per-block scales chosen for the least squared error."""
    shutil.copytree(src, out)
    model = onnx.load(out / "decoder.onnx")
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(reference / "decoder.onnx").graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, bs = attrs["K"], attrs["N"], attrs["block_size"]
        w = weights[node.input[1].rsplit("_Q4", 1)[0]].astype(np.float64)  # (K, N)
        blocks = np.zeros((n, -(-k // bs) * bs))
        blocks[:, :k] = w.T
        blocks = blocks.reshape(n, -1, bs)
        peak = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)  # the signed largest weight
        peak[peak == 0] = 1e-12
        best_err, best = None, None
        for alpha in np.linspace(0.7, 1.0, grid):
            s = alpha * peak / -8
            err = ((np.clip(np.round(blocks / s), -8, 7) * s - blocks) ** 2).sum(-1, keepdims=True)
            best_err, best = (err, s) if best is None else (np.minimum(err, best_err), np.where(err < best_err, s, best))
        q = (np.clip(np.round(blocks / best), -8, 7) + 8).astype(np.uint8)
        packed, scales = inits[node.input[1]], inits[node.input[2]]
        new_packed = (q[..., 0::2] | (q[..., 1::2] << 4)).reshape(numpy_helper.to_array(packed).shape)
        new_scales = best.reshape(numpy_helper.to_array(scales).shape).astype(np.float32)
        want = ((q.astype(np.float64) - 8) * best).reshape(n, -1)[:, :k].T
        assert np.allclose(dequantize(new_packed, new_scales, None, attrs), want, atol=1e-5)  # the layout MatMulNBits reads
        packed.CopyFrom(numpy_helper.from_array(new_packed, packed.name))
        scales.CopyFrom(numpy_helper.from_array(new_scales, scales.name))
    onnx.save(model, out / "decoder.onnx")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fused", type=Path, help="the fused fp32 pair (a cpu_int8_int4dec run's 2-fuse/)")
    p.add_argument("out", type=Path, help="work directory: variants and their eval JSON")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--reference", type=Path, default=Path("artifacts/firered-aed-tiny"))
    p.add_argument("--data", type=Path, default=Path("calibration/eval"))
    args = p.parse_args(argv)
    base = args.out / "encoder-int8"
    if not base.exists():
        int8.run(args.fused, base, int8.Int8Config(per_channel=True, graphs=("encoder",)))
    rows = []
    for name in args.variants:
        pair = args.out / name
        if not pair.exists():
            if VARIANTS[name] is None:
                if not (args.out / "bs32").exists():
                    int4.run(base, args.out / "bs32", int4.Int4WeightOnlyConfig())
                mse_scales(args.out / "bs32", base, pair)
            else:
                int4.run(base, pair, int4.Int4WeightOnlyConfig(**VARIANTS[name]))
        scores = args.out / f"{name}.json"
        if not scores.exists():
            cmd = ["optimize", "eval", str(pair), "--reference", str(args.reference), "--data", str(args.data),
                   "--recipe", "recipes/cpu_int8.yaml", "--json", str(scores)]  # fmt: skip
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        m = json.loads(scores.read_text())
        if "delta_error_rate" not in m:
            sys.exit(f"{name}: optimize eval failed (see {scores})")
        rows.append((name, VARIANTS[name], m["metrics"]["token_agreement"], m["delta_error_rate"]))
    print("| variant | int4_weight_only settings | identical to fp32 | error-rate delta (points) | >= 99% and <= +0.2 |\n|---|---|---:|---:|---|")
    for name, cfg, same, delta in rows:
        settings = "per-block least-squares scales (not a stage setting)" if cfg is None else (json.dumps(cfg) if cfg else "defaults")
        print(f"| {name} | {settings} | {100 * same:.1f}% | {delta:+.2f} | {'met' if same >= 0.99 and delta <= 0.2 else 'missed'} |")


if __name__ == "__main__":
    main()
