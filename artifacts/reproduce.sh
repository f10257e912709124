#!/usr/bin/env bash
# Rebuild the published embedded default from nothing. It was trained (phases 1 and 2) on the first
# corpus (corpus_version 1), whose generator is that of commit afe3aa0; this runs that commit's
# reproduce.sh in a git worktree (phase 1: 121 min from random weights; phase 2: 4262 steps from
# phase 1's model with a final linear decay) and copies its result here. Phase 3 (issue 15, the
# recording-conditions corpus) is artifacts/train_conditions.sh and is not published yet.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d work/v1 ] || git worktree add work/v1 afe3aa0
(cd work/v1 && bash artifacts/reproduce.sh)
cp -r work/v1/artifacts/firered-aed-tiny/. artifacts/firered-aed-tiny/
