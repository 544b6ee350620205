#!/bin/bash
# One of two processes side by side on a 2-core CPU (one torch thread each): train the listed runs as the
# pre-registered commands of docs/experiments.md would (the same tools/demo.py calls that tools/budget_curve.py
# makes: OUTPUT/iters_N, --seeds S, SOLVER.MAX_ITER N, SOLVER.STEPS 3N/4); the documented commands then reuse them.
# Each argument: "OUTPUT VALIDATION_SET CONFIG N SEED"
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
for spec in "$@"; do
  set -- $spec
  out=$1; val=$2; cfg=$3; n=$4; s=$5; steps=$(( 3 * n / 4 ))
  echo "=== $(date +%T) $cfg iters $n seed $s -> $out"
  .venv/bin/python tools/demo.py --output $out/iters_$n --seeds $s --validation-set $val \
      --configs $cfg --opts SOLVER.MAX_ITER $n SOLVER.STEPS "($steps,)" || echo "FAILED $cfg $n $s"
  echo "=== $(date +%T) done $cfg iters $n seed $s"
done
