"""ROC and FROC plots (PNG) with their curves as CSV, for evaluators and reports."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .metrics import FROC_FP_RATES


def plot_roc(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str, title: str = "ROC, per patient") -> None:
    """curves: name -> (labels, scores) over the same patients. Writes PNG and one CSV per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, s) in curves.items():
        if 0 < np.sum(y) < len(y):
            fpr, tpr, thr = roc_curve(y, s)
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
            with open(os.path.splitext(path)[0] + (f"_{name}" if len(curves) > 1 else "") + ".csv", "w",
                      newline="") as f:
                w = csv.writer(f)
                w.writerow(["fpr", "tpr", "threshold"])
                w.writerows(zip(fpr, tpr, thr))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_froc(curves: Mapping[str, Mapping], path: str, max_fppi: float = 8.0) -> None:
    """curves: name -> froc() result. Writes PNG (log x axis) and one CSV per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, r in curves.items():
        c = r["curve"]
        # past its last operating point a curve stays flat (no lower threshold gives more boxes)
        x = np.r_[np.maximum(c["fppi"], 1e-3), max_fppi]
        y = np.r_[c["sensitivity"], c["sensitivity"][-1]]
        ax.step(x, y, where="post", label=f"{name} (CPM {r['cpm']:.3f})")
        with open(os.path.splitext(path)[0] + (f"_{name}" if len(curves) > 1 else "") + ".csv", "w",
                  newline="") as f:
            w = csv.writer(f)
            w.writerow(["fppi", "sensitivity", "threshold"])
            w.writerows(zip(c["fppi"], c["sensitivity"], c["threshold"]))
    ax.set_xscale("log")
    rates = list(FROC_FP_RATES)
    ax.set_xticks(rates, [f"{v:g}" for v in rates])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="false positives per image", ylabel="lesion sensitivity", title="FROC",
           xlim=(0.1, max_fppi * 1.05), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_budget_curve(rows: Sequence[Mapping], metrics: Sequence[tuple[str, str]], path: str) -> None:
    """One panel per metric (key, label) against training iterations (log axis): per config its mean over seeds
    (line) and every seed (dots). ``rows``: dicts with iterations, config, seed and each metric key (NaN: left
    out of its panel). Writes PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    iters = sorted({r["iterations"] for r in rows})
    cols = 3
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.2 * nrows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, metrics):
        for i, name in enumerate(configs):
            color = f"C{i}"
            mine = [r for r in rows if r["config"] == name and np.isfinite(r[key])]
            ax.plot([r["iterations"] for r in mine], [r[key] for r in mine], "o", color=color, alpha=0.4, ms=4)
            xs, ys = [], []
            for n in iters:
                vals = [r[key] for r in mine if r["iterations"] == n]
                if vals:
                    xs.append(n)
                    ys.append(float(np.mean(vals)))
            ax.plot(xs, ys, "-", color=color, label=name)
        ax.set_xscale("log")
        ax.set_xticks(iters, [str(n) for n in iters])
        ax.minorticks_off()
        ax.set(title=label, xlabel="training iterations", ylim=(0, 1.01))
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_score_distributions(runs: Mapping[str, Mapping[str, Sequence[float]]], path: str,
                             threshold: float = 0.5) -> None:
    """runs: name -> finding -> scores. One row per finding, a box plot (with every score as a dot) per run, the
    threshold as a dotted line. Writes PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    findings = list(dict.fromkeys(g for groups in runs.values() for g in groups))
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(findings) * max(1, len(names))))
    width = 0.8 / max(1, len(names))
    rng = np.random.default_rng(0)  # the dots' vertical jitter only
    for i, name in enumerate(names):
        pos, data = [], []
        for j, g in enumerate(findings):
            v = list(runs[name].get(g, []))
            if v:
                pos.append(j + (i - (len(names) - 1) / 2) * width)
                data.append(v)
        if not data:
            continue
        color = f"C{i}"
        style = {"color": color}
        ax.boxplot(data, positions=pos, widths=width * 0.8, orientation="horizontal", showfliers=False,
                   manage_ticks=False, boxprops=style, medianprops=style, whiskerprops=style, capprops=style)
        for p, v in zip(pos, data):
            ax.plot(v, p + rng.uniform(-0.25, 0.25, len(v)) * width, ".", color=color, alpha=0.35, ms=3)
        ax.plot([], [], "s", color=color, label=name)
    ax.axvline(threshold, ls=":", color="grey")
    ax.set_yticks(range(len(findings)), findings)
    ax.invert_yaxis()
    ax.set(xlabel="score", xlim=(-0.02, 1.02), title="scores by finding (test images)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# (key, label, scale): COCO's AP50 is recorded in percent, as detectron2 does; plotted as a fraction
LEARNING_CURVE_METRICS = (("validation/patient/auc", "validation patient AUC", 1.0),
                          ("validation/patient/specificity@sensitivity_0.9",
                           "validation specificity at sensitivity 0.9", 1.0),
                          ("validation/bbox/AP50", "validation AP50", 0.01))


def plot_learning_curves(runs: Mapping[str, Sequence[Sequence[Mapping]]], path: str,
                         selected: Mapping[str, Sequence[int | None]] | None = None,
                         metrics: Sequence[tuple[str, str, float]] = LEARNING_CURVE_METRICS) -> None:
    """runs: name (a row) -> its runs' validation curves (one per seed; mammo_tl.evaluation.runs). One panel per
    metric ((key, label, scale): the value times scale is plotted) against iterations trained: per row a thick line,
    the mean over its seeds at the iterations all of them were evaluated at, and each seed a thin line; ``selected``
    (name -> per seed the iterations trained of the chosen checkpoint, or None) marks each chosen checkpoint with a
    ring. A metric no curve holds is left out. Writes PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m[0] in p for curves in runs.values() for c in curves for p in c)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.3 * max(1, len(metrics)), 3.6), squeeze=False)
    for ax, (key, label, scale) in zip(axes.flat, metrics):
        for i, (name, curves) in enumerate(runs.items()):
            color = f"C{i}"
            by_iter: dict[int, list[float]] = {}
            for k, curve in enumerate(curves):
                pts = [(p["iterations_trained"], p[key] * scale) for p in curve if key in p and np.isfinite(p[key])]
                ax.plot([x for x, _ in pts], [y for _, y in pts], ".-", color=color, lw=0.7, ms=3, alpha=0.45)
                for x, y in pts:
                    by_iter.setdefault(x, []).append(y)
                at = (selected or {}).get(name, [None] * len(curves))[k] if selected else None
                mark = [y for x, y in pts if x == at]
                if mark:
                    ax.plot([at], mark, "o", color=color, ms=6, mfc="none")
            xs = sorted(x for x, ys in by_iter.items() if len(ys) == len(curves))
            ax.plot(xs, [float(np.mean(by_iter[x])) for x in xs], "-", color=color, lw=2.0,
                    label=f"{name} ({len(curves)} seed{'s' if len(curves) != 1 else ''})")
        ax.set(title=label, xlabel="training iterations", ylim=(0, 1.01))
        ax.set_xlim(left=0)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
