"""How many eval utterances quantization changes, against how many harmless perturbations change.

    python benchmarks/int8_flips.py --data calibration/conditions/eval/manifest.jsonl --work work/flips

Decodes the eval set with the fp32 pair (greedy, joint with CTC at the pair's recommended
weight, batch 1, 1 thread: as recipes/cpu_int8.yaml) and with each variant, and counts the
utterances whose tokens differ from fp32 (the recipes' token agreement), with error rates and
the decode's CPU seconds. Variants (`--variants`, default all):

  fused          the simplify + fuse stages of cpu_int8.yaml (fp32 arithmetic, other kernels)
  threads2       the fp32 pair on 2 threads (other summation order)
  noise:S        fp32 on features plus Gaussian noise of standard deviation S (CMVN units, seed 0)
  int8           the int8 stage as cpu_int8.yaml on the fused pair (every constant-weight MatMul)
  only:GROUP     int8 on one group of MatMuls, every other MatMul float (GROUPS below)
  budget:B       int8 with keep_float_budget B, scored on --calibration (never the eval set)
  w8:L           int8_weight_only (8-bit weight blocks of 32, MatMulNBits) at accuracy_level L on both
                 graphs: 4 rounds the inputs per block of 32, 0 computes in float (weight rounding only)

With --margins it also records each utterance's smallest fp32 decision margin: over the greedy
joint steps, the gap between the best and the second-best candidate's joint score (log-prob
units), and compares the utterances each variant changes with those it leaves alone.

It answers the questions a token-agreement gate raises: is the eval set's agreement limited by
the model's own indecision (do perturbations far smaller than int8's change utterances too?), and
is it one part of the network or all of it (does int8 on any one group alone change as many?).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# structural groups of the FireRedASR AED graphs (node names of our export, after fuse)
GROUPS = {
    "enc_layer0": ("encoder", ["/encoder/input_preprocessor/*", "/encoder/layer_stack.0/*"]),
    "enc_layer1": ("encoder", ["/encoder/layer_stack.1/*"]),
    "enc_layer2": ("encoder", ["/encoder/layer_stack.2/*"]),
    "enc_layer3": ("encoder", ["/encoder/layer_stack.3/*"]),
    "enc_ffn": ("encoder", ["/encoder/*/ffn*"]),
    "enc_attention": ("encoder", ["/encoder/*/mhsa/*"]),
    "enc_conv_pointwise": ("encoder", ["/encoder/*/conv/*"]),
    "cross_kv": ("encoder", ["/w_ks*", "/w_vs*"]),
    "ctc": ("encoder", ["/ctc/*"]),
    "dec_ffn": ("decoder", ["/mlp/*"]),
    "dec_attention": ("decoder", ["/w_*", "/fc*"]),
    "dec_output_projection": ("decoder", ["/tgt_word_prj/*"]),
}
DEFAULT_VARIANTS = ["fused", "threads2", "noise:0.001", "noise:0.003", "noise:0.01", "int8", *(f"only:{g}" for g in GROUPS),
                    "budget:0.05", "budget:0.1", "budget:0.2"]  # fmt: skip


def features(manifest: Path, model: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    from optimize.corpus.manifest import read_manifest
    from optimize.runtime.audio import load_audio
    from optimize.runtime.recognizer import FrontEnd

    utts = read_manifest(manifest)
    front = FrontEnd.of(model)
    return [front.features(load_audio(u.audio)) for u in utts], [u.text for u in utts], [u.lang for u in utts]


def decode(model: Path, feats: list[np.ndarray], threads: int = 1, beam: int = 1) -> tuple[list[tuple[int, ...]], list[str], float]:
    from optimize.runtime.recognizer import Recognizer
    from optimize.runtime.search import DecodeConfig

    r = Recognizer(model, DecodeConfig(beam_size=beam), threads=threads)
    start = time.process_time()
    hyps = r.recognize_features(feats)
    return [h.tokens for h in hyps], [h.text for h in hyps], time.process_time() - start


def decision_margins(model: Path, feats: list[np.ndarray]) -> np.ndarray:
    """Per utterance, the smallest gap between the two best joint scores of a greedy step (fp32, batch 1).

    The search's last top-1 over the CTC pre-beam candidates is the decision; `search.topk` is
    wrapped for the duration to read its input (a diagnostic: the search itself is unchanged).
    """
    from optimize.runtime import search
    from optimize.runtime.recognizer import Recognizer
    from optimize.runtime.search import DecodeConfig

    gaps: list[float] = []
    plain = search.topk

    def watched(x: np.ndarray, k: int):
        if k == 1 and x.shape[1] == search.CTC_PRE_BEAM:  # the joint decision of a beam-1 step
            top = np.sort(x[0])[::-1]
            gaps.append(float(top[0] - top[1]))
        return plain(x, k)

    r = Recognizer(model, DecodeConfig(beam_size=1), threads=1)
    out = []
    search.topk = watched
    try:
        for f in feats:
            gaps.clear()
            r.recognize_features([f])
            out.append(min(gaps) if gaps else np.inf)
    finally:
        search.topk = plain
    return np.array(out)


def fused_pair(model: Path, out: Path) -> Path:
    from optimize.recipe import load_recipe
    from optimize.stages import load_stage

    src = model
    for i, stage in enumerate(load_recipe(REPO / "recipes" / "cpu_int8.yaml").stages[:2]):
        dst = out / f"{i}-{stage.name}"
        if not dst.exists():
            load_stage(stage.name).run(src, dst, stage.config)
        src = dst
    return src


def int8_pair(fused: Path, out: Path, variant: str, calibration: Path) -> Path:
    from optimize import graph
    from optimize.recipe import load_recipe
    from optimize.stages import int8, sensitivity

    cfg = next(s.config for s in load_recipe(REPO / "recipes" / "cpu_int8.yaml").stages if s.name == "int8")
    kind, _, arg = variant.partition(":")
    if kind == "only":
        role, patterns = GROUPS[arg]
        names = sensitivity.candidates(graph.load(fused / f"{role}.onnx"), role, set())
        others = tuple(sorted(c.node for c in names if not any(fnmatch.fnmatch(c.node, p) for p in patterns)))
        cfg = int8.Int8Config(**{**cfg.__dict__, "graphs": (role,), "nodes_to_exclude": others})
    elif kind == "w8":
        from optimize.stages import int8_weight_only

        dst = out / variant.replace(":", "_")
        shutil.rmtree(dst, ignore_errors=True)
        int8_weight_only.run(fused, dst, int8_weight_only.Int8WeightOnlyConfig(accuracy_level=int(arg)))
        return dst
    elif kind == "budget":
        cfg = int8.Int8Config(**{**cfg.__dict__, "keep_float_budget": float(arg), "calibration": calibration})
    dst = out / variant.replace(":", "_")
    shutil.rmtree(dst, ignore_errors=True)
    result = int8.run(fused, dst, cfg)
    (dst / "stage.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "artifacts" / "firered-aed-tiny")
    ap.add_argument("--data", type=Path, default=REPO / "calibration" / "eval" / "manifest.jsonl")
    ap.add_argument("--calibration", type=Path, default=Path("calibration/conditions/calib"), help="audio the budget variants are scored on")
    ap.add_argument("--work", type=Path, default=Path("work/flips"))
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS)
    ap.add_argument("--beam", type=int, default=1, help="beam size of every decode (1: greedy, as cpu_int8.yaml; 3: FireRedASR's)")
    ap.add_argument("--margins", action="store_true", help="also each utterance's smallest fp32 joint decision margin (greedy)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from optimize.evaluate.wer import score

    args.work.mkdir(parents=True, exist_ok=True)
    feats, refs, langs = features(args.data, args.model)
    base_tokens, base_texts, base_cpu = decode(args.model, feats, beam=args.beam)
    base = score(refs, base_texts, langs)["mixed"].rate
    rows = [{"variant": "fp32", "error_rate": base, "changed": 0, "cpu_s": base_cpu}]
    print(f"{len(feats)} utterances of {args.data}, beam {args.beam}; fp32 {base:.2f}%, decode CPU {base_cpu:.1f} s")
    fused = fused_pair(args.model, args.work) if any(v != "threads2" and not v.startswith("noise") for v in args.variants) else None
    for v in args.variants:
        pair, threads, inputs = args.model, 1, feats
        if v == "fused":
            pair = fused
        elif v == "threads2":
            threads = 2
        elif v.startswith("noise:"):
            rng = np.random.default_rng(0)
            inputs = [f + rng.standard_normal(f.shape).astype(np.float32) * float(v.split(":")[1]) for f in feats]
        else:
            pair = int8_pair(fused, args.work, v, args.calibration)
        tokens, texts, cpu = decode(pair, inputs, threads, args.beam)
        changed = [i for i, (a, b) in enumerate(zip(base_tokens, tokens)) if a != b]
        rate = score(refs, texts, langs)["mixed"].rate
        rows.append({"variant": v, "error_rate": rate, "changed": len(changed), "changed_ids": changed, "cpu_s": cpu})
        print(f"{v:28s} {rate:6.2f}% ({rate - base:+.2f})  changed {len(changed):3d}/{len(feats)}  identical {100 - 100 * len(changed) / len(feats):5.1f}%  "
              f"decode CPU {cpu:5.1f} s  {changed}", flush=True)  # fmt: skip
    margins = None
    if args.margins:
        margins = decision_margins(args.model, feats)
        close = margins < 0.05
        print(f"fp32 greedy joint decision margin: median {np.median(margins):.3f}; {close.sum()} of {len(feats)} utterances have a step within 0.05")
        for row in rows[1:]:
            changed = np.zeros(len(feats), dtype=bool)
            changed[row["changed_ids"]] = True
            if changed.any():
                print(f"{row['variant']:28s} changed: median margin {np.median(margins[changed]):.3f}, {int((close & changed).sum())} of {int(changed.sum())} within 0.05;"
                      f" unchanged: median {np.median(margins[~changed]):.3f}, {int((close & ~changed).sum())} of {int((~changed).sum())} within 0.05")  # fmt: skip
    if args.json:
        out = {"data": str(args.data), "model": str(args.model), "utterances": len(feats), "rows": rows}
        if margins is not None:
            out["margins"] = margins.tolist()
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
