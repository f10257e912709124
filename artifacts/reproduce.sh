#!/usr/bin/env bash
# Rebuild phases 1 and 2 of the embedded default from nothing. They trained on the first corpus
# (corpus_version 1), whose generator is that of commit afe3aa0; this runs that commit's
# reproduce.sh in a git worktree (phase 1: 121 min from random weights; phase 2: 4262 steps from
# phase 1's model with a final linear decay) and copies its result here. The published model is
# phase 3 on top of it (the recording-conditions corpus): artifacts/train_conditions.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d work/v1 ] || git worktree add work/v1 afe3aa0
(cd work/v1 && bash artifacts/reproduce.sh)
cp -r work/v1/artifacts/firered-aed-tiny/. artifacts/firered-aed-tiny/
