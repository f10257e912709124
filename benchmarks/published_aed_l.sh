#!/usr/bin/env bash
# Issue 12 at AED-L size: a v2-style published pair (fp32, > 2 GB, encoder.weights) made with the
# official modules from a random AED-L checkpoint, then the cpu_int8 stages on it (reexport first;
# benchmarks/published_aed_l.yaml: the stages of recipes/cpu_int8_aed_l.yaml, lighter checks).
#   flock /work/aedl.lock nice -n 10 benchmarks/published_aed_l.sh CKPT_DIR WORK_DIR
# Peak RSS of the published-style export is printed by /usr/bin/time; the pipeline's report
# lists each stage's peak RSS and the parity of every stage against the published input.
set -euo pipefail
ckpt=${1:-work/aed_l/ckpt}
work=${2:-work/published_aed_l}
mkdir -p "$work"
if [ ! -f "$work/v2/encoder.weights" ]; then
  /usr/bin/time -v python tests/published_style.py "$ckpt" "$work/v2" --style v2 2> "$work/make_v2.time"
  grep -E "Maximum resident|Elapsed" "$work/make_v2.time"
fi
ls -l "$work/v2"
optimize run benchmarks/published_aed_l.yaml --model "$work/v2" -o runs/published_aed_l
