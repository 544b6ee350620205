"""ROC and FROC plots (PNG) with their curves as CSV, for evaluators and reports."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping

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
