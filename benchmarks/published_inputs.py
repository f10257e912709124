"""Published-style inputs vs our own export, through the same recipes, side by side (issue 12).

    python benchmarks/published_inputs.py [--out work/published_bench] [--rounds 2] [--every 6]

1. Makes published-style pairs of the embedded default's checkpoint with the official
   modules (tests/published_style.py): v1 (opset 13, fixed 1024 cache, batch 1), v2
   (opset 17, dynamic cache, encoder.weights) and the v1 fp16 sibling.
2. Runs `optimize run recipes/cpu_int8.yaml --model X` on each and on our own export
   (artifacts/firered-aed-tiny, exported from the same checkpoint), and
   `recipes/gpu_fp16.yaml --provider cpu` on our export, v2 and v1-fp16 (the pipeline puts
   stage reexport first for published inputs; gates are judged against the published
   input as the baseline).
3. Times every final pair in one measurement phase, interleaved round by round with
   `optimize eval --recipe` (CPU seconds per audio second, 1 thread, the eval set), and
   writes a table: size and CPU time relative to our export's final pair under the same
   recipe, whether the final files are byte-identical, error rate, agreement with the
   published input and the reexport stage's proof.
4. Decodes the eval subset with sherpa-onnx (OfflineRecognizer.from_fire_red_asr, greedy)
   on every final pair and counts the utterances whose text equals our greedy search's
   (sherpa stops at 8 tokens per second of audio: a prefix of ours there also counts).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DEFAULT = ROOT / "artifacts" / "firered-aed-tiny"
RECIPES = {"cpu_int8": ["recipes/cpu_int8.yaml"], "gpu_fp16": ["recipes/gpu_fp16.yaml", "--provider", "cpu"]}
# (recipe, input name): what is compared; "own" is the reference of each recipe
RUNS = [("cpu_int8", "own"), ("cpu_int8", "v1"), ("cpu_int8", "v2"), ("cpu_int8", "v1-fp16"), ("gpu_fp16", "own"), ("gpu_fp16", "v2"), ("gpu_fp16", "v1-fp16")]


def lscpu() -> dict[str, str]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx", "sse4", "amx", "fma")) or f in ("vnni",)]
    return {"model": fields.get("Model name", "?").strip(), "cpus": fields.get("CPU(s)", "?").strip(), "simd": " ".join(simd)}


def make_inputs(out: Path) -> dict[str, Path]:
    import published_style

    ckpt = DEFAULT / "checkpoint"
    pairs = {"own": DEFAULT}
    for style in ("v1", "v2"):
        if not (out / style / "decoder.onnx").is_file():
            published_style.make_published(ckpt, out / style, style)
        pairs[style] = out / style
    if not (out / "v1-fp16" / "decoder.onnx").is_file():
        published_style.to_fp16(out / "v1", out / "v1-fp16")
    pairs["v1-fp16"] = out / "v1-fp16"
    return pairs


def eval_subset(out: Path, every: int) -> Path:
    """Every `every`-th utterance of calibration/eval (all languages and conditions), audio paths absolute."""
    src = ROOT / "calibration" / "eval" / "manifest.jsonl"
    lines = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][::every]
    for u in lines:
        u["audio"] = str((src.parent / u["audio"]).resolve())
    dst = out / f"eval-every{every}" / "manifest.jsonl"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(u, ensure_ascii=False) + "\n" for u in lines), encoding="utf-8")
    return dst


def run_recipe(recipe: str, name: str, model: Path, out: Path, data: Path) -> Path:
    run_dir = out / "runs" / f"{recipe}-{name}"
    cmd = ["optimize", "run", *RECIPES[recipe], "--model", str(model), "-o", str(run_dir), "--data", str(data)]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:  # a speedup gate can miss on a machine shared with other jobs: once more
        print("$", " ".join(cmd), "--force", flush=True)
        subprocess.run([*cmd, "--force"], check=True)
    return run_dir


def cpu_rtf(final: Path, recipe: str, out: Path, tag: str, data: Path) -> float:
    js = out / "eval" / f"{tag}.json"
    js.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["optimize", "eval", str(final), "--recipe", RECIPES[recipe][0], "--provider", "cpu", "--json", str(js), "--data", str(data)],
                   check=True, capture_output=True)  # fmt: skip
    return json.loads(js.read_text())["metrics"]["rtf"]["cpu_rtf"]


def sherpa_agreement(final: Path, data: Path) -> tuple[int, int]:
    """(utterances where sherpa-onnx's greedy text equals ours, or is a prefix cut by its length cap; utterances)."""
    import sherpa_onnx

    from optimize.corpus.manifest import read_manifest
    from optimize.runtime.audio import load_audio
    from optimize.runtime.recognizer import Recognizer
    from optimize.runtime.search import DecodeConfig

    rec = sherpa_onnx.OfflineRecognizer.from_fire_red_asr(encoder=str(final / "encoder.onnx"), decoder=str(final / "decoder.onnx"),
                                                          tokens=str(final / "tokens.txt"), num_threads=1, decoding_method="greedy_search")  # fmt: skip
    ours = Recognizer(final, DecodeConfig(beam_size=1, softmax_smoothing=1.0, length_penalty=0.0))
    utts, agree = read_manifest(data), 0
    for u in utts:
        samples = load_audio(u.audio)
        stream = rec.create_stream()
        stream.accept_waveform(16000, samples / 32768.0)
        rec.decode_stream(stream)
        theirs, mine = stream.result.text.strip(), ours.recognize_features([ours.features(samples)])[0].text
        capped = len(stream.result.tokens) >= int(u.duration * 8) - 1
        agree += theirs == mine or (capped and mine.startswith(theirs))
    return agree, len(utts)


def digest(pair: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(pair.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "work" / "published_bench")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds over all final pairs")
    p.add_argument("--every", type=int, default=6, help="use every N-th eval utterance (1 = all 360; 6 = 60: a shared 2-core machine)")
    a = p.parse_args()
    pairs = make_inputs(a.out)
    data = eval_subset(a.out, a.every)
    runs = {(r, n): run_recipe(r, n, pairs[n], a.out, data) for r, n in RUNS}
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for i in range(a.rounds):  # interleaved: a load change hits every pair alike
        for key, run_dir in runs.items():
            times[key].append(cpu_rtf(run_dir / "final", key[0], a.out, f"{key[0]}-{key[1]}-{i}", data))
            print(key, times[key][-1], flush=True)
    rows = []
    for (recipe, name), run_dir in runs.items():
        report = json.loads((run_dir / "report.json").read_text())
        last, first = report["stages"][-1], report["stages"][0]
        proof = next((s["notes"] for s in report["stages"] if s["name"] == "reexport"), [])
        own = runs[(recipe, "own")]
        size = sum(f.stat().st_size for f in (run_dir / "final").iterdir()) / 1e6
        own_size = sum(f.stat().st_size for f in (own / "final").iterdir()) / 1e6
        rtf, own_rtf = statistics.median(times[(recipe, name)]), statistics.median(times[(recipe, "own")])
        rows.append({"recipe": recipe, "input": name, "size_mb": size, "size_ratio": size / own_size, "cpu_rtf": rtf,
                     "cpu_rtf_ratio": rtf / own_rtf, "identical_to_own": digest(run_dir / "final") == digest(own / "final"),
                     "error_rate": last["error_rate"], "baseline_error_rate": first["error_rate"], "agreement": last["token_agreement"],
                     "baseline_cpu_rtf": first["rtf_cpu"], "stages": [s["name"] for s in report["stages"]], "proof": proof[1:],
                     "sherpa_agrees": sherpa_agreement(run_dir / "final", data)})  # fmt: skip
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"), "cpu": lscpu(),
            "python": platform.python_version(), "threads": 1, "rounds": a.rounds, "data": str(data), "rows": rows}  # fmt: skip
    (a.out / "results.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta["cpu"]))
    print("| recipe | input | stages | final MB | size vs own | CPU RTF | CPU time vs own | final identical to own | error rate % (published input) | agreement | sherpa-onnx = our greedy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['input']} | {' > '.join(r['stages'])} | {r['size_mb']:.2f} | {r['size_ratio']:.3f} | {r['cpu_rtf']:.4f} | "
              f"{r['cpu_rtf_ratio']:.3f} | {'yes' if r['identical_to_own'] else 'no'} | {r['error_rate']:.2f} ({r['baseline_error_rate']:.2f}) | {r['agreement']:.3f} | {r['sherpa_agrees'][0]}/{r['sherpa_agrees'][1]} |")  # fmt: skip


if __name__ == "__main__":
    main()
