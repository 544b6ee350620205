#!/bin/bash
# collect.sh SRC_BUDGET_DIR DEST_DIR: the curve, each length's aggregate report and results, every run's small files
src=$1; dest=$2
mkdir -p $dest/runs
for f in budget_curve.csv budget_curve.json budget_curve.md budget_curve.png; do [ -f $src/$f ] && cp $src/$f $dest/; done
for d in $src/iters_*; do
  n=$(basename $d)
  cp $d/report.md $dest/${n}_report.md; cp $d/results.json $dest/${n}_results.json
  for s in $d/seed_*; do
    for r in $s/*/; do
      r=${r%/}; [ -f $r/config.yaml ] || continue
      base=${n}_$(basename $s)_$(basename $r)
      cp $r/config.yaml $dest/runs/${base}_config.yaml
      cp $r/inference/eval_results.json $dest/runs/${base}_eval_results.json 2>/dev/null
      cp $r/operating_points.json $dest/runs/${base}_operating_points.json 2>/dev/null
    done
  done
done
