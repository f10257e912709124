#!/usr/bin/env bash
# Rebuild the embedded default from nothing: corpus, tokenizer, training, export, manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m optimize.corpus synth --split train --count 12000 --seed 1 --out work/corpus/train --jobs 2
python -m optimize.corpus synth --split dev --count 200 --seed 2 --out work/corpus/dev --jobs 2
python -m optimize.corpus tokenizer --train work/corpus/train --out work/corpus/lang --spm-vocab-size 300 \
    --check work/corpus/dev calibration/eval calibration/calib
python -m optimize.export.train --train work/corpus/train --dev work/corpus/dev --lang work/corpus/lang \
    --out work/train --max-minutes "${TRAIN_MINUTES:-120}"
python -m optimize.export.publish work/train/best artifacts/firered-aed-tiny --lang work/corpus/lang \
    --train-log work/train/train.log
