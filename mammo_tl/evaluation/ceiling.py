"""The ceiling row (a model told what the look-alikes are, docs/experiments.md part three) in a report: the share of
the ceiling's AUC gain over the baseline that each other row recovers, with its bootstrap interval."""
from __future__ import annotations

import html
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..config import flatten_config, load_yaml_file
from .markup import html_table, md_table
from .metrics import _interval, _point_metrics, batch_metrics


def is_ceiling_run(run_dir: str) -> bool:
    """A run trained with a second class (boxed benign findings): its saved config's MODEL.ROI_HEADS.NUM_CLASSES > 1."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        return False
    return int(flatten_config(load_yaml_file(path)).get("MODEL.ROI_HEADS.NUM_CLASSES", 1)) > 1


def ceiling_share(y: ArrayLike, base: Sequence[ArrayLike], method: Sequence[ArrayLike], ceiling: Sequence[ArrayLike],
                  bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05,
                  chunk: int = 500) -> dict[str, Any]:
    """The share of the ceiling's AUC gain that a method recovers: (method - base) / (ceiling - base), each
    difference pooled over seeds (the mean of the per-seed differences; ``base``, ``method``, ``ceiling``: one score
    array per seed, in the order of ``y``). Its interval: the (alpha/2, 1 - alpha/2) percentiles over bootstrap
    replicates of the same ratio, both differences computed on the same resample of the patients; a replicate
    whose ceiling gain is not above 0 has no share and is counted in ``"replicates_without_gain"``. Returns
    {"share", "method_gain", "ceiling_gain", "ci", "replicates_without_gain", "replicates"}."""
    y = np.asarray(y)
    runs = [tuple(np.asarray(s, dtype=np.float64) for s in t) for t in zip(base, method, ceiling)]
    auc = {k: [float(_point_metrics(y, r[i], 0.5)["auc"]) for r in runs] for i, k in enumerate(("b", "m", "c"))}
    method_gain = float(np.mean(np.subtract(auc["m"], auc["b"])))
    ceiling_gain = float(np.mean(np.subtract(auc["c"], auc["b"])))
    out = {"share": method_gain / ceiling_gain if ceiling_gain > 0 else float("nan"), "method_gain": method_gain,
           "ceiling_gain": ceiling_gain, "ci": [float("nan"), float("nan")], "replicates_without_gain": 0,
           "replicates": int(bootstrap)}
    if not bootstrap:
        return out
    rng = np.random.default_rng(seed)
    shares, without, done = [], 0, 0
    while done < bootstrap:
        n = min(chunk, bootstrap - done)
        idx = rng.integers(0, len(y), (n, len(y)))
        y_resampled = y[idx]
        gain_m, gain_c = np.zeros(n), np.zeros(n)
        for b, m, c in runs:
            ab = batch_metrics(y_resampled, b[idx], 0.5, True)["auc"]
            gain_m += batch_metrics(y_resampled, m[idx], 0.5, True)["auc"] - ab
            gain_c += batch_metrics(y_resampled, c[idx], 0.5, True)["auc"] - ab
        defined = np.isfinite(gain_c) & (gain_c > 0)
        without += int((~defined).sum())
        shares.append(gain_m[defined] / gain_c[defined])
        done += n
    out["ci"] = list(_interval(np.concatenate(shares), alpha))
    out["replicates_without_gain"] = without
    return out


def ceiling_shares(scores: Mapping[str, Sequence[ArrayLike]], run_dirs: Mapping[str, str], y: ArrayLike,
                   bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any] | None:
    """``scores``: name -> per seed the patient scores in the order of ``y`` (the first name the baseline);
    ``run_dirs``: name -> one of its run folders. When a non-baseline row is a ceiling (:func:`is_ceiling_run`),
    {"row": its name, "shares": name -> :func:`ceiling_share` for every other non-baseline row}; else None."""
    names = list(scores)
    ceilings = [n for n in names[1:] if is_ceiling_run(run_dirs[n])]
    if not ceilings:
        return None
    base, ceiling = names[0], ceilings[0]
    return {"row": ceiling, "shares": OrderedDict(
        (n, ceiling_share(y, scores[base], scores[n], scores[ceiling], bootstrap, seed, alpha))
        for n in names[1:] if n != ceiling)}


def ceiling_section(results: Mapping[str, Any], base: str) -> tuple[list[str], list[str]]:
    """The share of the ceiling's gain each row recovers (Markdown lines, HTML parts); nothing without a ceiling."""
    c = results.get("ceiling")
    if not c:
        return [], []
    head = ["row", "AUC gain over " + base, f"{c['row']} (ceiling) gain", "share of the ceiling's gain [95% CI]",
            "replicates without a ceiling gain"]
    rows = [[n, f"{s['method_gain']:+.3f}", f"{s['ceiling_gain']:+.3f}",
             "n/a (no ceiling gain)" if not np.isfinite(s["share"]) else
             f"{s['share']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]", f"{s['replicates_without_gain']} of "
             f"{s['replicates']}"] for n, s in c["shares"].items()]
    text = (f"The ceiling, {c['row']}, is trained with the look-alikes boxed as a second class. "
            f"Share = (row - {base}) / ({c['row']} - {base}), patient AUCs pooled over seeds; its interval from the "
            "same bootstrap replicates as the differences above (a replicate whose ceiling gain is not above 0 has "
            "no share). The share means something only when the ceiling's own gain over the baseline is above 0.")
    verdict = ceiling_verdict(results, base)
    return (["## Share of the ceiling's gain", "", text, "", f"**{verdict}**", "", md_table(head, rows), ""],
            ["<h2>Share of the ceiling's gain</h2>", f"<p>{html.escape(text)}</p>",
             f"<p><b>{html.escape(verdict)}</b></p>", html_table(head, rows)])


def ceiling_verdict(results: Mapping[str, Any], base: str) -> str:
    """Whether the ceiling stands above the baseline in these runs (its AUC difference's interval above 0), the
    condition under which a row's share of its gain can be read; a sentence."""
    c = results["ceiling"]
    d = results.get("differences", {}).get(f"{c['row']} - {base}", {}).get("auc")
    if not d or d.get("ci") is None or not np.all(np.isfinite(d["ci"])):
        return (f"Whether the ceiling stands above {base} is not known here (no interval for their AUC difference): "
                "read no share.")
    diff, (lo, hi) = d["diff"], d["ci"]
    if lo > 0:
        return (f"The ceiling stands above {base}: AUC {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]. The shares below can be "
                "read.")
    return (f"The ceiling does not stand above {base} here: AUC {diff:+.3f} [{lo:+.3f}, {hi:+.3f}], an interval "
            f"not above 0. At this training length even a model told what the look-alikes are does not rank patients "
            f"better than {base}, so no row can be read against it: the shares below mean nothing. The learning "
            "curves show how the rows compare during training; docs/experiments.md (part three) where the ceiling "
            "separates.")


