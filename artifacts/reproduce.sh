#!/usr/bin/env bash
# Rebuild the embedded default: corpus, training, export, manifest.
# The published model was made in three phases on this project's 2-core machine:
#   1. from random weights, 121 min / 5038 steps on the first corpus (corpus_version 1: one sentence
#      of 1-4 s, rates 140-190, noise down to 10 dB), dev token error 8.4%;
#   2. from phase 1's best model: 1262 steps on the inverse-sqrt schedule, then the rate falls
#      linearly to 0 over 3000 steps; published at commit afe3aa0 (eval mixed 2.63% on the first eval set);
#   3. from phase 2's published model, on the recording-conditions corpus (corpus_version 2,
#      calibration/README.md): fresh optimizer, schedule resumed at step 6000, linear decay to 0.
# Phases 1 and 2 need the corpus_version-1 generator of commit afe3aa0
# (`git worktree add /tmp/v1 afe3aa0 && bash /tmp/v1/artifacts/reproduce.sh`); this script runs
# phase 3 from phase 2's model as committed there. A stopped phase resumes from `last.pt` in its
# `--out` directory when the same command is run again; phase 3 stops on time (PHASE3_MINUTES).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m optimize.corpus synth --split train --count 3451 --seed 1 --out work/corpus/train --jobs 2
python -m optimize.corpus synth --split dev --count 120 --seed 2 --out work/corpus/dev --jobs 2
head -80 work/corpus/dev/manifest.jsonl > work/corpus/dev/manifest80.jsonl  # dev scoring: its first 80
mkdir -p work/phase2
for f in model.pth.tar cmvn.ark dict.txt train_bpe.model; do
    git show "afe3aa0:artifacts/firered-aed-tiny/checkpoint/$f" > "work/phase2/$f"
done
git show afe3aa0:artifacts/firered-aed-tiny/manifest.json \
    | python -c "import json,sys; [print(json.dumps(r)) for r in json.load(sys.stdin)['training_log']]" > work/phase2/train.log
python -m optimize.export.train --train work/corpus/train --dev work/corpus/dev/manifest80.jsonl --lang work/phase2 \
    --out work/train-v3 --init work/phase2 --init-step 6000 --anneal 6100 6600 \
    --eval-every 100 --max-minutes "${PHASE3_MINUTES:-80}"
python -c "import json,sys; [print(json.dumps(json.loads(l) | {'phase': 3})) for l in open('work/train-v3/train.log')]" \
    | cat work/phase2/train.log - > work/train-v3/all.log
python -m optimize.export.publish work/train-v3/best artifacts/firered-aed-tiny --lang work/phase2 \
    --train-log work/train-v3/all.log
