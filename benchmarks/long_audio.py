"""Long audio: a 10-minute recording of eval utterances joined with pauses, VAD + batch decode vs one by one.

    python benchmarks/long_audio.py [--seconds 600] [--threads 1] [--batch-size 1 4] [--rounds 2] [--first 0] [--seed 0] [--compare-vad]

Builds the recording with `optimize.corpus.longform.join` (utterances of calibration/eval in
manifest order, 0.6-1.5 s pauses of room noise), writes it as a 16-bit wav, then per round:
- one by one: `Recognizer.transcribe([file])` for each utterance file (read, fbank, decode), beam 3;
- long: `Recognizer.transcribe_long([recording])` (read, Silero VAD, fbank, batch decode), beam 3, once per
  --batch-size (1 is `optimize transcribe`'s default, 4 is `--batch-size 4`).
Reports whether every sentence came back in order with segment times within 0.5 s of the joins,
both error rates, and wall time / RTF of each (RTF = wall seconds / audio seconds: the utterances'
total for one by one, the recording's length for long; the wall-time ratio on the same speech is
printed too). --compare-vad also scores Silero against webrtcvad on the same recording at three
levels of room noise.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import optimize.corpus.longform as longform
from optimize.corpus.manifest import read_manifest
from optimize.evaluate.wer import score
from optimize.runtime import vad
from optimize.runtime.recognizer import Recognizer
from optimize.runtime.search import DecodeConfig

REPO = Path(__file__).resolve().parents[1]


def boundary_check(segs: list[tuple[float, float]], placed) -> dict:
    """Match segments to the placed utterances by overlap: missing, split, merged, false, boundary errors."""
    truth = [(p.start, p.end) for p in placed]
    errs, missing, split = [], 0, 0
    for a, b in truth:
        hit = [(s, e) for s, e in segs if e > a and s < b]
        if not hit:
            missing += 1
            continue
        split += len(hit) > 1
        errs += [abs(hit[0][0] - a), abs(hit[-1][1] - b)]
    merged = sum(sum(1 for a, b in truth if e > a and s < b) > 1 for s, e in segs)
    false = sum(not any(e > a and s < b for a, b in truth) for s, e in segs)
    errs = np.array(errs or [np.inf])
    return {"segments": len(segs), "missing": missing, "split": split, "merged": merged, "false": false,
            "p95": float(np.percentile(errs, 95)), "max": float(errs.max()), "over_0.5": int((errs > 0.5).sum())}  # fmt: skip


def webrtc_probabilities(samples: np.ndarray, mode: int) -> tuple[np.ndarray, int]:
    import webrtcvad

    v, hop = webrtcvad.Vad(mode), 480  # 30 ms frames
    pcm = np.clip(np.round(samples), -32768, 32767).astype(np.int16)
    return np.array([float(v.is_speech(pcm[i * hop : (i + 1) * hop].tobytes(), 16000)) for i in range(len(pcm) // hop)]), hop


def compare_vad(utts, seconds: float) -> None:
    print("\n| room noise (int16 std) | VAD | seconds | segments | missing | split | merged | false | p95 err s | max err s | > 0.5 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for noise in (100.0, 1000.0, 3000.0):
        longform.ROOM_NOISE = noise
        x, placed = longform.join(utts, seconds)
        runs = [("silero", lambda: (vad.silero_probabilities(x), vad.WINDOW))] + [
            (f"webrtcvad mode {m}", lambda m=m: webrtc_probabilities(x, m)) for m in (1, 3)
        ]
        for name, fn in runs:
            t0 = time.perf_counter()
            probs, hop = fn()
            took = time.perf_counter() - t0
            segs = [(s / 16000, e / 16000) for s, e in vad.segments(probs, hop, len(x), samples=x)]
            c = boundary_check(segs, placed)
            print(f"| {noise:.0f} | {name} | {took:.2f} | {c['segments']} / {len(placed)} | {c['missing']} | {c['split']} | {c['merged']} | {c['false']} | {c['p95']:.3f} | {c['max']:.3f} | {c['over_0.5']} |")
    longform.ROOM_NOISE = 100.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "artifacts" / "firered-aed-tiny")
    ap.add_argument("--data", type=Path, default=REPO / "calibration" / "eval")
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--first", type=int, default=0, help="skip the manifest's utterances before this one (200: held out from the default recording)")
    ap.add_argument("--seed", type=int, default=0, help="pause lengths and room noise")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 4], help="segments per decoder run on the long path; each is timed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare-vad", action="store_true")
    args = ap.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), platform.processor())
    print(f"CPU {model_name}; {args.threads} thread(s); beam 3; long path batch {args.batch_size}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")  # fmt: skip

    utts = read_manifest(args.data)[args.first :]
    samples, placed = longform.join(utts, args.seconds, seed=args.seed)
    files = [p.utterance.audio for p in placed]
    speech = sum(p.end - p.start for p in placed)
    duration = len(samples) / 16000
    print(f"recording {duration:.1f} s, {len(placed)} utterances ({speech:.1f} s of them), pauses 0.6-1.5 s")
    one = Recognizer(args.model, DecodeConfig(beam_size=3, batch_size=1), threads=args.threads)
    many = {b: Recognizer(args.model, DecodeConfig(beam_size=3, batch_size=b), threads=args.threads) for b in args.batch_size}
    transcripts = {}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        sf.write(wav, np.clip(np.round(samples), -32768, 32767).astype(np.int16), 16000, subtype="PCM_16")
        one.transcribe(files[:2])  # warm-up, untimed
        for rec in many.values():
            rec.transcribe_long([files[0]])
        for r in range(args.rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            singles = [one.transcribe([f])[0] for f in files]
            t_one, c_one = time.perf_counter() - t0, time.process_time() - c0
            print(f"round {r + 1}: one by one {t_one:.1f} s wall / {c_one:.1f} s CPU (RTF {t_one / speech:.4f}, CPU RTF {c_one / speech:.4f})")
            for b, rec in many.items():
                t0, c0 = time.perf_counter(), time.process_time()
                (transcripts[b],) = rec.transcribe_long([wav])
                t_long, c_long = time.perf_counter() - t0, time.process_time() - c0
                # CPU seconds of this process measure the work; on a shared machine the wall clock mostly measures the neighbours
                print(f"  long, batch {b}: {t_long:.1f} s wall / {c_long:.1f} s CPU (RTF {t_long / duration:.4f}, CPU RTF {c_long / duration:.4f}); "
                      f"ratio long/one-by-one: RTF {t_long / duration / (t_one / speech):.2f}, CPU RTF {c_long / duration / (c_one / speech):.2f}; "
                      f"CPU seconds on the same speech {c_long / c_one:.2f}")  # fmt: skip
    refs, langs = [p.utterance.text for p in placed], [p.utterance.lang for p in placed]
    rate_one = score(refs, [h.text for h in singles], langs)["mixed"].rate
    for b, transcript in transcripts.items():
        report(f"batch {b}", transcript, placed, refs, langs, rate_one)
    if args.compare_vad:
        compare_vad(utts, args.seconds)


def report(name: str, transcript, placed, refs, langs, rate_one: float) -> None:
    """Segments against the joins, and the error rate against one by one."""
    segs = transcript.segments
    check = boundary_check([(s.start, s.end) for s in segs], placed)
    in_order = len(segs) == len(placed) and check["missing"] == check["split"] == check["merged"] == 0
    rate_long = score(refs, [s.hypothesis.text for s in segs], langs)["mixed"].rate if in_order else float("nan")
    whole = score([" ".join(refs)], [transcript.text], ["zh"])["mixed"].rate  # the joined text against the joined references
    print(f"{name}: segments {len(segs)} for {len(placed)} utterances; every sentence in order, one segment each: {in_order}; "
          f"boundary error p95 {check['p95']:.3f} s, max {check['max']:.3f} s, over 0.5 s: {check['over_0.5']}")  # fmt: skip
    print(f"{name}: mixed error rate: one by one {rate_one:.2f}%, long {rate_long:.2f}% (per segment), {whole:.2f}% (whole text); difference {rate_long - rate_one:+.2f} points")


if __name__ == "__main__":
    main()
