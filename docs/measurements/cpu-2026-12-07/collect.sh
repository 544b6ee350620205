#!/bin/bash
# collect.sh SRC_BUDGET_DIR DEST_DIR: part three's raw files. Every run's small files, finished or not: its config,
# its validation learning curve so far, and, once it has finished, its checkpoint selection, the test results of the
# chosen and of the final checkpoint and its operating points; each length's aggregate report when there is one.
src=$1; dest=$2
mkdir -p "$dest/runs"
for d in "$src"/iters_*; do
  n=$(basename "$d")
  [ -f "$d/report.md" ] && cp "$d/report.md" "$dest/${n}_report.md" && cp "$d/results.json" "$dest/${n}_results.json"
  [ -f "$d/learning_curves.png" ] && cp "$d/learning_curves.png" "$dest/${n}_learning_curves.png"
  for s in "$d"/seed_*; do
    for r in "$s"/*/; do
      r=${r%/}; [ -f "$r/config.yaml" ] || continue
      base=${n}_$(basename "$s")_$(basename "$r")
      cp "$r/config.yaml" "$dest/runs/${base}_config.yaml"
      for f in validation_curve.json selection.json operating_points.json; do
        [ -f "$r/$f" ] && cp "$r/$f" "$dest/runs/${base}_${f}"
      done
      [ -f "$r/inference/eval_results.json" ] && cp "$r/inference/eval_results.json" "$dest/runs/${base}_eval_results.json"
      [ -f "$r/inference_final/eval_results.json" ] && \
        cp "$r/inference_final/eval_results.json" "$dest/runs/${base}_final_eval_results.json"
      # the last iteration its metrics.json records: how far an unfinished run got
      [ -f "$r/metrics.json" ] && tail -n 1 "$r/metrics.json" | python3 -c \
        "import json,sys; print(json.loads(sys.stdin.read()).get('iteration'))" > "$dest/runs/${base}_last_iteration.txt"
    done
  done
done
