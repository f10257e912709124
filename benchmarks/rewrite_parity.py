"""Transcripts of one pair with its decoder rewritten (our runtime's default) vs run as published, side by side.

    python benchmarks/rewrite_parity.py artifacts/firered-aed-tiny
    python benchmarks/rewrite_parity.py runs/cpu_int8/final --data calibration/eval

The runtime rewrites the decoder in memory (optimize/runtime/decoder_graph.py); this decodes every
utterance of a manifest both ways at beam 1, beam 3 and beam 3 x batch 8 and counts identical
transcripts and the largest score difference. Exact pairs give 0; int8 pairs may differ in the
score by a rounding of a per-tensor dynamic activation scale, which spans all rows of a step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from optimize.runtime.providers import ProviderOptions
from optimize.runtime.recognizer import Recognizer
from optimize.runtime.search import DecodeConfig

SETTINGS = ((1, 1), (3, 1), (3, 8))  # (beam, batch)


def decode_all(pair: Path, audio: list[str], beam: int, batch: int, rewrite: bool) -> tuple[list, list, float, str]:
    """(tokens, scores, seconds, layout) of every file, `batch` at a time, one intra-op thread."""
    options = ProviderOptions(rewrite_decoder=rewrite, intra_op_spinning=False)
    rec = Recognizer(pair, DecodeConfig(beam_size=beam, batch_size=batch), threads=1, options=options)
    start = time.perf_counter()
    hyps = [h for i in range(0, len(audio), batch) for h in rec.transcribe(audio[i : i + batch])]
    return [h.tokens for h in hyps], [h.score for h in hyps], time.perf_counter() - start, str(rec.pair.layout)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pair", type=Path)
    p.add_argument("--data", type=Path, default=Path("calibration/eval"), help="directory with manifest.jsonl")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in (args.data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    audio = [str(args.data / r["audio"]) for r in rows]
    out = {}
    for beam, batch in SETTINGS:
        ours, published = (decode_all(args.pair, audio, beam, batch, rewrite) for rewrite in (True, False))
        same = sum(a == b for a, b in zip(ours[0], published[0]))
        diff = max(abs(a - b) for a, b in zip(ours[1], published[1]))
        out[f"beam {beam}, batch {batch}"] = {"identical": same, "of": len(audio), "max_score_diff": diff, "layout": ours[3]}
        print(f"beam {beam} batch {batch}: {same}/{len(audio)} identical, max |score diff| {diff:.2e} ({ours[3]})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
