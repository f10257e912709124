"""Accuracy of a model pair on a manifest, greedy and beam, broken down by every recorded condition.

    python benchmarks/accuracy_default.py artifacts/firered-aed-tiny calibration/eval [--sherpa] [--json out.json]
        [--vad above=0 pad=0.4 ...] [--ctc-weight 0.3 0.5]

Decodes every utterance twice with `optimize`'s recognizer: greedy (beam 1, no smoothing or
length penalty) and FireRedASR beam search (beam 3 by default). Prints markdown tables of CER zh,
WER en and the mixed rate for both, per eval condition, length bucket, sentences per utterance,
speaking rate, channel, room, hum, noise, SNR, voice and variant. With --sherpa it also decodes
every file with sherpa-onnx's `OfflineRecognizer.from_fire_red_asr` (greedy) and counts utterances
whose text differs from our greedy search. With --vad, each recording goes through
`Recognizer.transcribe_long` instead (`optimize transcribe`'s long-audio path: Silero VAD segments,
decoded as one batch, texts joined) with `VadConfig` fields set as given, e.g. `--vad above=0` cuts
every recording at its pauses. Greedy and beam are FireRedASR's attention-only searches; beam search
is also run jointly with the pair's CTC head (`DecodeConfig.ctc_weight`) at each --ctc-weight W and
at the pair's recommended weight (encoder metadata `ctc_weight`) when it has one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from optimize.corpus.manifest import Utterance, read_manifest
from optimize.errors import OptimizeError
from optimize.evaluate.wer import score
from optimize.runtime.audio import load_audio
from optimize.runtime.recognizer import Recognizer
from optimize.runtime.search import DecodeConfig
from optimize.runtime.vad import VadConfig

LENGTH_BUCKETS_S = (4, 8, 12, 16)  # upper edges; the last bucket is open


def _bucket(value: float | None, edges, unit: str) -> str:
    if value is None:
        return "(none)"
    low = 0
    for edge in edges:
        if value < edge:
            return f"{low}-{edge} {unit}"
        low = edge
    return f">= {low} {unit}"


def _order(group: str) -> tuple:
    """Buckets by their lower edge ("4-8 s" before "12-16 s"), then names alphabetically."""
    head = group.lstrip(">= ").split("-")[0].split(" ")[0]
    try:
        return (0, float(head), group)
    except ValueError:
        return (1, 0.0, group)


# group name -> the key of an utterance (None: the utterance is left out of that table)
BREAKDOWNS: dict[str, Callable[[Utterance], str | None]] = {
    "condition": lambda u: u.extra.get("condition"),
    "length": lambda u: _bucket(u.duration, LENGTH_BUCKETS_S, "s"),
    "sentences": lambda u: None if "sentences" not in u.extra else _bucket(u.extra["sentences"], (2, 3, 5), "sentences"),
    "rate": lambda u: None if "rate" not in u.extra else _bucket(u.extra["rate"], (140, 170, 200), "wpm"),
    "channel": lambda u: u.extra.get("channel"),
    "room": lambda u: None if "rt60" not in u.extra else ("dry" if u.extra["rt60"] is None else _bucket(u.extra["rt60"], (0.4, 0.6), "s RT60")),
    "hum": lambda u: None if "hum_hz" not in u.extra else f"{u.extra['hum_hz'] or 'no'} Hz",
    "noise": lambda u: u.extra.get("noise"),
    "snr": lambda u: None if "snr_db" not in u.extra else _bucket(u.extra["snr_db"], (10, 15, 20), "dB"),
    "voice": lambda u: str(u.extra["voice"]).split("+")[0] if "voice" in u.extra else None,
    "variant": lambda u: (str(u.extra["voice"]).split("+") + ["(none)"])[1] if "voice" in u.extra else None,
}


def rates(idx: list[int], refs, hyps, langs) -> dict[str, float | None]:
    s = score([refs[i] for i in idx], [hyps[i] for i in idx], [langs[i] for i in idx])
    return {k: (round(s[k].rate, 2) if k in s and s[k].ref_len else None) for k in ("zh", "en", "mixed")}


def breakdown(utts: list[Utterance], refs, langs, decodes: dict[str, list[str]]) -> dict[str, dict[str, dict]]:
    """{table: {group: {"utts", "minutes", <decode>: {"zh", "en", "mixed"}}}} for every breakdown."""
    tables = {"set": {"all": list(range(len(utts)))}}
    for name, key in BREAKDOWNS.items():
        groups = defaultdict(list)
        for i, u in enumerate(utts):
            if (k := key(u)) is not None:
                groups[str(k)].append(i)
        if groups:
            tables[name] = dict(sorted(groups.items(), key=lambda kv: _order(kv[0])))
    return {
        name: {g: {"utts": len(idx), "minutes": round(sum(utts[i].duration for i in idx) / 60, 2),
                   **{d: rates(idx, refs, hyps, langs) for d, hyps in decodes.items()}} for g, idx in groups.items()}
        for name, groups in tables.items()
    }  # fmt: skip


def markdown(name: str, table: dict[str, dict], decodes: list[str]) -> str:
    head = " | ".join(f"{d} {k}" for d in decodes for k in ("zh CER %", "en WER %", "mixed %"))
    lines = [f"| {name} | utts | min | {head} |", "|---" * (3 + 3 * len(decodes)) + "|"]
    cell = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for group, row in table.items():
        values = " | ".join(cell(row[d][k]) for d in decodes for k in ("zh", "en", "mixed"))
        lines.append(f"| {group} | {row['utts']} | {row['minutes']:.1f} | {values} |")
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


def vad_config(pairs: list[str], fail: Callable[[str], None]) -> VadConfig:
    """VadConfig with the FIELD=VALUE pairs set (floats); `fail` gets a one-line message for a bad pair."""
    fields = set(VadConfig.__dataclass_fields__)
    values = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            if name not in fields:
                raise ValueError
            values[name] = float(value)
        except ValueError:
            fail(f"--vad {pair}: use FIELD=NUMBER with FIELD one of {', '.join(sorted(fields))}")
    try:
        return VadConfig(**values)
    except OptimizeError as e:
        fail(str(e))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--beam-size", type=int, default=DecodeConfig.beam_size)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sherpa", action="store_true")
    p.add_argument("--json", type=Path, help="also write every table (and the hypotheses) as JSON here")
    p.add_argument("--ctc-weight", type=float, nargs="+", default=[], metavar="W",
                   help="also decode beam B jointly with the CTC head at each of these weights (a pair exported --with-ctc)")
    p.add_argument("--vad", nargs="+", metavar="FIELD=VALUE", help="decode through the VAD long-audio path with these VadConfig fields (e.g. above=0)")
    a = p.parse_args()
    vad = vad_config(a.vad, p.error) if a.vad else None
    utts = read_manifest(a.data)
    try:
        recommended = Recognizer(a.model_dir, threads=1).decode.ctc_weight  # the pair's own (metadata ctc_weight), else 0
        configs = {
            "greedy": DecodeConfig(beam_size=1, softmax_smoothing=1.0, length_penalty=0.0, batch_size=8, ctc_weight=0.0),
            f"beam {a.beam_size}": DecodeConfig(beam_size=a.beam_size, batch_size=8, ctc_weight=0.0),
            **{f"beam {a.beam_size} ctc {w:g}": DecodeConfig(beam_size=a.beam_size, batch_size=8, ctc_weight=w)
               for w in sorted(set(a.ctc_weight) | ({recommended} if recommended else set()))},
        }
        feats = None
        decodes, seconds = {}, {}
        for name, config in configs.items():
            rec = Recognizer(a.model_dir, config, threads=a.threads)
            if vad is None:  # features once, outside the clock; the VAD path reads and cuts the audio itself
                feats = feats or [rec.features(load_audio(u.audio)) for u in utts]
            t0 = time.perf_counter()
            if vad is None:
                decodes[name] = [h.text for h in rec.recognize_features(feats)]
            else:
                decodes[name] = [t.text for t in rec.transcribe_long([u.audio for u in utts], vad=vad)]
            seconds[name] = round(time.perf_counter() - t0, 1)
    except OptimizeError as e:  # a bad weight, or a pair without the CTC head
        p.error(str(e))
    refs, langs = [u.text for u in utts], [u.lang for u in utts]
    print(f"model {a.model_dir}, data {a.data}: {len(utts)} utterances, {sum(u.duration for u in utts) / 60:.1f} min, "
          f"batch 8, {a.threads} threads, {'VAD ' + str(vad) if vad else 'whole utterances'}, decode time {seconds}\n")  # fmt: skip
    tables = breakdown(utts, refs, langs, decodes)
    for name, table in tables.items():
        print(markdown(name, table, list(decodes)) + "\n")
    result = {"model": str(a.model_dir), "data": str(a.data), "vad": vars(vad) if vad else None, "decode_seconds": seconds, "tables": tables}
    if a.sherpa:
        bad, truncated = sherpa_mismatches(a.model_dir, utts, decodes["greedy"])
        result["sherpa"] = {"identical": len(utts) - bad - truncated, "capped": truncated, "different": bad}
        print(f"sherpa-onnx greedy vs optimize greedy: {len(utts) - bad - truncated}/{len(utts)} identical, "
              f"{truncated} cut short by sherpa's 8-tokens-per-second cap (a prefix of ours), {bad} different")
    if a.json:
        result["hyps"] = {str(u.extra.get("id", u.audio.name)): dict(zip(decodes, h)) for u, *h in zip(utts, *decodes.values())}
        tmp = a.json.with_name(a.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(a.json)


if __name__ == "__main__":
    main()
