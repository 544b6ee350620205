"""What a training run's folder says about model selection: which weights its test results belong to
(selection.json, written by mammo_tl.engine.hooks.FinalTestHook), its validation learning curve
(validation_curve.json, written by mammo_tl.engine.hooks.ValidationHook) and, for a run kept without its weights
(archived.json, written by mammo_tl.experiments.archive), the SHA-256 of the weights it was made with."""
from __future__ import annotations

import json
import os
from typing import Any

SELECTION_FILE = "selection.json"
CURVE_FILE = "validation_curve.json"
ARCHIVE_FILE = "archived.json"
FINAL_DIR = "inference_final"  # the final checkpoint's test evaluation, beside the chosen one's (inference/)


def load_selection(run_dir: str) -> dict[str, Any] | None:
    """The run's selection.json (rule, metric, validation set, selected and final checkpoints), None for a run
    trained without a validation set."""
    path = os.path.join(run_dir, SELECTION_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def selected_weights(run_dir: str) -> str:
    """The weights a finished run's test results (inference/eval_results.json) belong to: the validation-chosen
    checkpoint named in selection.json, else model_final.pth (a run without a validation set)."""
    selection = load_selection(run_dir)
    return os.path.join(run_dir, selection["selected"]["weights"] if selection else "model_final.pth")


def is_finished(run_dir: str) -> bool:
    """A run that training finished: its test results (inference/eval_results.json) are written and the weights
    they belong to are there with the final ones, or the run was kept without its weights (archived.json). The one
    definition every command that reuses or archives runs goes by."""
    if not os.path.exists(os.path.join(run_dir, "inference", "eval_results.json")):
        return False
    if load_archive(run_dir) is not None:
        return True
    return os.path.exists(selected_weights(run_dir)) and os.path.exists(os.path.join(run_dir, "model_final.pth"))


def load_validation_curve(run_dir: str) -> list[dict[str, float]] | None:
    """The run's learning curve: [{"iteration", "iterations_trained", "validation/...": value}] in order of
    training, None for a run trained without a validation set."""
    path = os.path.join(run_dir, CURVE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return sorted(json.load(f), key=lambda p: p["iteration"])


def load_archive(run_dir: str) -> dict[str, Any] | None:
    """The run's archived.json (a finished run kept without its weights: the SHA-256 of its selected and final
    weights and of every file it kept), None for a run folder as training left it."""
    path = os.path.join(run_dir, ARCHIVE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def weights_digest(run_dir: str, weights_path: str) -> str | None:
    """The SHA-256 of ``weights_path`` (a file of ``run_dir``): of the file itself when it is there, else as the
    run's archived.json recorded it before the weights were left out; None when neither is known."""
    from ..files import sha256_file

    if os.path.exists(weights_path):
        return sha256_file(weights_path)
    archive = load_archive(run_dir)
    return (archive or {}).get("weights", {}).get(os.path.relpath(weights_path, run_dir))
