#!/bin/bash
# $1: config file; runs 600 (seeds 0 1), 1200 (seeds 0 1), 2400 (seed 0) as budget_curve.py would, one process
cd /work/main
export OMP_NUM_THREADS=1
cfg=$1
for spec in "600 0" "600 1" "1200 0" "1200 1" "2400 0"; do
  set -- $spec
  n=$1; s=$2; steps=$(( 3 * n / 4 ))
  echo "=== $(date +%T) $cfg iters $n seed $s"
  .venv/bin/python tools/demo.py --output output/ddsm/budget/iters_$n --seeds $s --validation-set mammo_synth_ddsm_val \
      --configs $cfg --opts SOLVER.MAX_ITER $n SOLVER.STEPS "($steps,)" || echo "FAILED $cfg $n $s"
  echo "=== $(date +%T) done $cfg iters $n seed $s"
done
