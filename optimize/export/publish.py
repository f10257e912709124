"""Publish a trained checkpoint as the embedded default in `artifacts/`.

    python -m optimize.export.publish work/train/best artifacts/firered-aed-tiny \
        --lang work/corpus/lang --train-log work/train/train.log

Writes `checkpoint/` (official format; weights stored as float16 to fit the repository
budget, and the ONNX pair is exported from exactly these values), the `optimize export`
pair beside it, and `manifest.json` with the sha256 and size of
every file and how it was made. When the checkpoint directory holds training's CTC head
(`ctc_head.pt`, written by optimize.export.train), the model is published in the
FireRedASR2-AED format: the checkpoint carries `ctc.ctc_lo` and the pair is exported
`--with-ctc` (the encoder's third output, the CTC log-probs); `--ctc-weight` then records the
joint-decoding weight the recognizer uses by default (encoder metadata `ctc_weight`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from optimize.errors import OptimizeError
from optimize.export.checkpoint import load_checkpoint, save_checkpoint
from optimize.export.exporter import ExportConfig, export_checkpoint
from optimize.export.model import FireRedAsrAed
from optimize.export.train import CTC_HEAD_FILE

HOW = (
    "phases 1-2 (commit afe3aa0): python -m optimize.corpus synth (corpus_version 1: train seed 1, 12000 utts; "
    "dev seed 2, 200 utts), python -m optimize.corpus tokenizer, python -m optimize.export.train; phase 3: "
    "python -m optimize.corpus synth (corpus_version 2, recording conditions: train seed 1, 3451 utts; dev seed 2), "
    "python -m optimize.export.train --init <phase 2 model> (resumed pieces), python -m optimize.export.average; python -m optimize.export.publish; "
    "phase 4: python -m optimize.corpus synth (corpus_version 2: train seed 3, 6000 utts, beside seed 1), "
    "python -m optimize.export.train --init <phase 3 model> (resumed pieces), python -m optimize.export.average; python -m optimize.export.publish; "
    "phase 5: python -m optimize.corpus synth (corpus_version 2: train seed 5, 6000 utts, beside seeds 1 and 3), "
    "python -m optimize.export.train --init <phase 4 model> (resumed pieces), python -m optimize.export.average; python -m optimize.export.publish; "
    "see calibration/README.md and artifacts/README.md (artifacts/reproduce.sh, artifacts/train_conditions.sh)"
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(ckpt_dir: Path, out_dir: Path, lang_dir: Path | None, train_log: Path | None, ctc_weight: float | None = None) -> Path:
    ckpt = load_checkpoint(ckpt_dir)
    model = ckpt.model
    if (ckpt_dir / CTC_HEAD_FILE).is_file():  # training's CTC head: publish as FireRedASR2-AED
        model = FireRedAsrAed(ckpt.dims, with_ctc=True)
        model.load_state_dict(ckpt.model.state_dict() | torch.load(ckpt_dir / CTC_HEAD_FILE, map_location="cpu"))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        stage = Path(tmp) / out_dir.name
        save_checkpoint(stage / "checkpoint", model, ckpt.cmvn_stats, ckpt.tokens, dtype=torch.float16)
        if lang_dir is not None:
            shutil.copy(lang_dir / "train_bpe.model", stage / "checkpoint" / "train_bpe.model")
        export_checkpoint(stage / "checkpoint", stage, ExportConfig(with_ctc=model.ctc is not None, ctc_weight=ctc_weight))
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        manifest = {
            "model": "firered-aed-tiny",
            "architecture": "FireRedASR AED (conformer encoder + transformer decoder)",
            "format": "FireRedASR2-AED (CTC head ctc.ctc_lo; exported --with-ctc)" if model.ctc is not None else "FireRedASR-AED",
            "decode": {"ctc_weight": ctc_weight if ctc_weight is not None else 0.0},
            "dims": {k: v for k, v in ckpt.dims.__dict__.items()},
            "parameters": sum(p.numel() for p in model.parameters()),
            "how": HOW,
            "training_log": [json.loads(line) for line in train_log.read_text().splitlines()] if train_log else [],
            "files": {str(p.relative_to(stage)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        stage.rename(out_dir)
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--lang", type=Path, default=None, help="directory with train_bpe.model to ship beside dict.txt")
    p.add_argument("--train-log", type=Path, default=None, help="train.log (dev error per evaluation) to record")
    p.add_argument("--ctc-weight", type=float, default=None, help="with a CTC head: the joint-decoding weight to recommend (chosen on dev)")
    a = p.parse_args()
    if a.lang is not None and not (a.lang / "train_bpe.model").is_file():
        p.error(f"--lang {a.lang} holds no train_bpe.model (pass the directory of the model's tokenizer)")
    try:
        print(publish(a.ckpt_dir, a.out_dir, a.lang, a.train_log, a.ctc_weight))
    except OptimizeError as e:  # e.g. a recommended ctc_weight for a checkpoint without the CTC head
        p.error(str(e))


if __name__ == "__main__":
    main()
