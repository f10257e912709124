#!/usr/bin/env bash
# Rebuild the embedded default from nothing: corpus, tokenizer, training, export, manifest.
# Training has two phases, as the published model was made:
#   1. from random weights for PHASE1_MINUTES (published: 121 min, 5038 steps, dev token error 8.4%);
#   2. from phase 1's best model (fresh optimizer, 100-step re-warm-up): 1262 steps on the
#      inverse-sqrt schedule, then the rate falls linearly to 0 over 3000 steps.
# Phase 1 stops on time, so its step count (and everything after) depends on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m optimize.corpus synth --split train --count 12000 --seed 1 --out work/corpus/train --jobs 2
python -m optimize.corpus synth --split dev --count 200 --seed 2 --out work/corpus/dev --jobs 2
python -m optimize.corpus tokenizer --train work/corpus/train --out work/corpus/lang --spm-vocab-size 300 \
    --check work/corpus/dev calibration/eval calibration/calib
DATA=(--train work/corpus/train --dev work/corpus/dev --lang work/corpus/lang)
python -m optimize.export.train "${DATA[@]}" --out work/train --max-minutes "${PHASE1_MINUTES:-121}"
STEP=$(python -c "import json,sys; print(json.loads(open('work/train/train.log').read().splitlines()[-1])['step'])")
python -m optimize.export.train "${DATA[@]}" --out work/train-ft --max-minutes 240 \
    --init work/train/best --init-step "$STEP" --anneal $((STEP + 1262)) $((STEP + 4262))
cat work/train/train.log work/train-ft/train.log > work/train-ft/all.log
python -m optimize.export.publish work/train-ft/best artifacts/firered-aed-tiny --lang work/corpus/lang \
    --train-log work/train-ft/all.log
