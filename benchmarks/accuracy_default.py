"""Accuracy of a model pair on a manifest, per language and per condition, plus a sherpa-onnx check.

    python benchmarks/accuracy_default.py artifacts/firered-aed-tiny calibration/eval [--sherpa]

Decodes with `optimize`'s recognizer (FireRedASR beam 3 by default) and prints markdown tables:
error rate per language (CER zh, WER en, mixed), per eval condition (seen / unseen voice /
unseen noise) and per noise type. With --sherpa it also decodes every file with sherpa-onnx's
`OfflineRecognizer.from_fire_red_asr` (greedy) and counts utterances whose text differs from
our greedy search.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from optimize.corpus.manifest import read_manifest
from optimize.evaluate.wer import score
from optimize.runtime.audio import load_audio
from optimize.runtime.recognizer import Recognizer
from optimize.runtime.search import DecodeConfig


def _table(title: str, groups: dict[str, list[int]], refs, hyps, langs) -> str:
    lines = [f"| {title} | utts | zh CER % | en WER % | mixed % |", "|---|---|---|---|---|"]
    for name, idx in sorted(groups.items()):
        s = score([refs[i] for i in idx], [hyps[i] for i in idx], [langs[i] for i in idx])
        cell = lambda k: f"{s[k].rate:.2f}" if k in s and s[k].ref_len else "-"  # noqa: E731
        lines.append(f"| {name} | {len(idx)} | {cell('zh')} | {cell('en')} | {cell('mixed')} |")
    return "\n".join(lines)


def sherpa_mismatches(model_dir: Path, utts, ours_greedy: list[str]) -> tuple[int, int]:
    """(different, truncated): texts that differ, and those where sherpa stopped early at its
    own cap of 8 tokens per second of audio (its output is then a prefix of ours)."""
    import sherpa_onnx

    rec = sherpa_onnx.OfflineRecognizer.from_fire_red_asr(
        encoder=str(model_dir / "encoder.onnx"), decoder=str(model_dir / "decoder.onnx"),
        tokens=str(model_dir / "tokens.txt"), num_threads=2, decoding_method="greedy_search",
    )  # fmt: skip
    bad = truncated = 0
    for u, text in zip(utts, ours_greedy):
        stream = rec.create_stream()
        stream.accept_waveform(16000, load_audio(u.audio) / 32768.0)
        rec.decode_stream(stream)
        theirs = stream.result.text.strip()
        if theirs == text:
            continue
        capped = len(stream.result.tokens) >= int(u.duration * 8) - 1 and text.startswith(theirs)
        truncated += capped
        bad += not capped
        print(f"sherpa {'stopped at its cap' if capped else 'differs'} on {u.audio.name}: {theirs!r} vs ours {text!r}", file=sys.stderr)
    return bad, truncated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--beam-size", type=int, default=DecodeConfig.beam_size)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sherpa", action="store_true")
    a = p.parse_args()
    utts = read_manifest(a.data)
    rec = Recognizer(a.model_dir, DecodeConfig(beam_size=a.beam_size, batch_size=8), threads=a.threads)
    feats = [rec.features(load_audio(u.audio)) for u in utts]
    t0 = time.perf_counter()
    hyps = [h.text for h in rec.recognize_features(feats)]
    elapsed = time.perf_counter() - t0
    refs, langs = [u.text for u in utts], [u.lang for u in utts]
    print(f"model {a.model_dir}, data {a.data}: {len(utts)} utterances, {sum(u.duration for u in utts) / 60:.1f} min, "
          f"beam {a.beam_size}, batch 8, {a.threads} threads, decode time {elapsed:.1f} s\n")  # fmt: skip
    everything = {"all": list(range(len(utts)))}
    print(_table("set", everything, refs, hyps, langs) + "\n")
    keys = {
        "condition": lambda u: str(u.extra.get("condition")),
        "noise": lambda u: str(u.extra.get("noise")),
        "voice": lambda u: str(u.extra.get("voice", "")).split("+")[0],
        "variant": lambda u: (str(u.extra.get("voice", "")).split("+") + ["(none)"])[1],
    }
    for key, of in keys.items():
        groups = defaultdict(list)
        for i, u in enumerate(utts):
            groups[of(u)].append(i)
        print(_table(key, groups, refs, hyps, langs) + "\n")
    if a.sherpa:
        greedy = Recognizer(a.model_dir, DecodeConfig(beam_size=1, softmax_smoothing=1.0, length_penalty=0.0, batch_size=8), threads=a.threads)
        ours = [h.text for h in greedy.recognize_features(feats)]
        bad, truncated = sherpa_mismatches(a.model_dir, utts, ours)
        print(f"sherpa-onnx greedy vs optimize greedy: {len(utts) - bad - truncated}/{len(utts)} identical, "
              f"{truncated} cut short by sherpa's 8-tokens-per-second cap (a prefix of ours), {bad} different")


if __name__ == "__main__":
    main()
