"""The budget curve: the same configs (e.g. the baseline and the method) trained for several lengths, each length
over its own training seeds, all evaluated on the same test patients (tools/budget_curve.py).

Each length N trains every config with ``SOLVER.MAX_ITER N`` and ``SOLVER.STEPS (3N/4,)`` (the learning-rate drop
at the same fraction as the CPU configs' 450 of 600) through :func:`mammo_tl.experiments.demo.run_demo` into
OUTPUT/iters_<N>/ (seed_<s>/<config name>/ per seed, operating points chosen on the validation set, each seed's
report and the aggregate over seeds), with the demo's guarantees: a finished run is reused, an interrupted one
resumed, a folder of another config refused. Then OUTPUT/budget_curve.csv (one row per length, config and seed),
budget_curve.md (the mean over seeds per length and config) and budget_curve.png (each metric against iterations)
collect, for every run: AUC, sensitivity and specificity at the paper's threshold 0.5 and at the operating points
chosen on the validation patients, AP50 and FROC CPM. For configs that choose their model on a validation set
(DATASETS.VALIDATION), budget_curve.md also shows each length's learning curves (iters_<N>/learning_curves.png).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence

from ..files import atomic_write_json, atomic_write_text
from .rows import SEED_DIR, config_name

# (column, what it is) in the table and the plot; "<point>" columns are the test figures at an operating point
# chosen on the validation set (mammo_tl.evaluation.operating_points)
POINTS = ("sensitivity_0.9", "youden")
METRICS = (("auc", "AUC"), ("sensitivity", "sensitivity at 0.5"), ("specificity", "specificity at 0.5"),
           *((f"{k}@{p}", f"{k} at {p} (validation)") for p in POINTS for k in ("sensitivity", "specificity")),
           ("ap50", "AP50"), ("froc_cpm", "FROC CPM"))


class BudgetError(ValueError):
    """A --budgets entry that cannot be read, or a run whose results are missing; the message names it."""


def parse_budgets(items: Sequence[str]) -> list[tuple[int, list[int]]]:
    """``["600:0,1", "2400:0"]`` -> ``[(600, [0, 1]), (2400, [0])]``: training lengths and their seeds."""
    out = []
    for item in items:
        iters, sep, seeds = str(item).partition(":")
        try:
            if not sep:
                raise ValueError
            n = int(iters)
            seed_list = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise BudgetError(f"--budgets {item!r}: expected ITERATIONS:SEED,SEED,... (e.g. 600:0,1)") from None
        if n < 4 or not seed_list or len(set(seed_list)) != len(seed_list):
            raise BudgetError(f"--budgets {item!r}: need at least 4 iterations and distinct seeds (e.g. 600:0,1)")
        if n in {b for b, _ in out}:
            raise BudgetError(f"--budgets {item!r}: {n} iterations given twice")
        out.append((n, seed_list))
    if not out:
        raise BudgetError("--budgets: give at least one ITERATIONS:SEEDS")
    return sorted(out)


def budget_opts(iters: int) -> list[str]:
    """Config overrides of a run of ``iters`` iterations: the learning-rate drop at 3/4 of it."""
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({max(1, (3 * iters) // 4)},)"]


def budget_dir(output: str, iters: int) -> str:
    return os.path.join(output, f"iters_{iters}")


def run_budget_curve(output: str, configs: Sequence[str], budgets: Sequence[tuple[int, list[int]]],
                     extra_opts: Sequence[str] = (), bootstrap: int = 1000, validation_set: str | None = None,
                     jobs: int = 1) -> list:
    """Train and evaluate ``configs`` at every length of ``budgets`` (see the module docstring), then write the
    table and the plot; returns the table's rows."""
    from .demo import VALIDATION_SET, run_demo

    for iters, seeds in budgets:
        print(f"[budget] {iters} iterations, seeds {seeds}: {budget_dir(output, iters)}", flush=True)
        run_demo(budget_dir(output, iters), configs, extra_opts=[*extra_opts, *budget_opts(iters)],
                 bootstrap=bootstrap, seeds=seeds, validation_set=validation_set or VALIDATION_SET, jobs=jobs)
    return write_budget_curve(output, [config_name(c) for c in configs], budgets)


def collect(output: str, names: Sequence[str], budgets: Sequence[tuple[int, list[int]]]) -> list[dict]:
    """One row per length, config and seed, from each seed's results.json (mammo_tl.evaluation.report)."""
    rows = []
    for iters, seeds in budgets:
        for s in seeds:
            path = os.path.join(budget_dir(output, iters), SEED_DIR.format(s), "results.json")
            try:
                with open(path) as f:
                    runs = json.load(f)["runs"]
            except (OSError, ValueError, KeyError) as e:
                raise BudgetError(f"{path}: no results of seed {s} at {iters} iterations ({e}); run the budget "
                                  "curve again to train and evaluate it") from None
            for name in names:
                if name not in runs:
                    raise BudgetError(f"{path}: holds no run {name!r} (it has {sorted(runs)})")
                r = runs[name]
                row = {"iterations": iters, "config": name, "seed": s}
                row.update({k: float(r[k]) for k in ("auc", "sensitivity", "specificity", "ap50", "froc_cpm")})
                test = (r.get("operating_points") or {}).get("test", {})
                for p in POINTS:
                    for k in ("sensitivity", "specificity"):
                        row[f"{k}@{p}"] = float(test[p][k]) if p in test else float("nan")
                rows.append(row)
    return rows


def mean_rows(rows: Sequence[dict]) -> list[dict]:
    """Per (iterations, config): the mean of every metric over the seeds where it is a number, and the seeds."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["iterations"], r["config"]), []).append(r)
    out = []
    for (iters, name), rs in groups.items():
        m = {"iterations": iters, "config": name, "seeds": [r["seed"] for r in rs]}
        for k, _ in METRICS:
            vals = [r[k] for r in rs if not math.isnan(r[k])]
            m[k] = sum(vals) / len(vals) if vals else float("nan")
        out.append(m)
    return out


def _fmt(v):
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}"


def write_budget_curve(output: str, names: Sequence[str], budgets: Sequence[tuple[int, list[int]]]) -> list[dict]:
    """budget_curve.csv, .json, .md and .png in ``output`` from the runs already there; returns the rows."""
    from ..evaluation.plots import plot_budget_curve

    rows = collect(output, names, budgets)
    keys = ["iterations", "config", "seed", *(k for k, _ in METRICS)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(output, "budget_curve.csv"), buf.getvalue())
    means = mean_rows(rows)
    atomic_write_json({"metrics": dict(METRICS), "runs": rows, "means": means},
                      os.path.join(output, "budget_curve.json"))
    header = ["iterations", "config", "seeds", *(label for _, label in METRICS)]
    md = ["# Budget curve", "",
          "Mean over training seeds, test patients; the per-seed figures are in budget_curve.csv, each run's report "
          "under iters_<N>/.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join([str(m["iterations"]), m["config"], " ".join(map(str, m["seeds"]))]
                             + [_fmt(m[k]) for k, _ in METRICS]) + " |" for m in means]
    md += ["", "![budget curve](budget_curve.png)", ""]
    curves = [(n, os.path.join(f"iters_{n}", "learning_curves.png")) for n, _ in budgets
              if os.path.exists(os.path.join(output, f"iters_{n}", "learning_curves.png"))]
    if curves:  # runs with a validation set: each length's learning curves, from its aggregate report
        md += ["Validation learning curves (each row's mean over seeds thick, each seed thin, the chosen checkpoints "
               "ringed):", "", *(f"![learning curves, {n} iterations]({path})" for n, path in curves), ""]
    atomic_write_text(os.path.join(output, "budget_curve.md"), "\n".join(md))
    plot_budget_curve(rows, METRICS, os.path.join(output, "budget_curve.png"))
    return rows
