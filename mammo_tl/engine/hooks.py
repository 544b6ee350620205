"""Model selection on validation data: ValidationHook evaluates DATASETS.VALIDATION during training,
BestCheckpointHook keeps the checkpoint with the best validation metric (survives --resume), and FinalTestHook
evaluates DATASETS.TEST once, at the end, on that checkpoint and on the final one."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from detectron2.engine import HookBase
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer

from ..evaluation.runs import CURVE_FILE, FINAL_DIR, SELECTION_FILE
from ..files import atomic_write_json

logger = logging.getLogger(__name__)


class BestCheckpointHook(HookBase):
    """After each evaluation (detectron2's EvalHook puts the results in the event storage, and thus in
    TensorBoard and metrics.json), save ``<file_prefix>.pth`` when ``metric`` beats the best so far.

    The best value and its iteration are part of the trainer's state (saved in every checkpoint) and
    are also written to ``<file_prefix>.json`` beside the model, which ``--resume`` reads back, so a
    resumed run never overwrites a better model with a worse one.
    """

    def __init__(self, eval_period: int, checkpointer: Checkpointer, metric: str = "patient/auc", mode: str = "max",
                 file_prefix: str = "model_best") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.eval_period = eval_period
        self.checkpointer = checkpointer
        self.metric = metric
        self.mode = mode
        self.file_prefix = file_prefix
        self.best_value = None
        self.best_iter = None
        self._warned = False

    @property
    def _record_path(self):
        return os.path.join(self.checkpointer.save_dir, self.file_prefix + ".json")

    def _better(self, value):
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def _check(self):
        latest = self.trainer.storage.latest()
        if self.metric not in latest:
            if comm.is_main_process() and not self._warned:
                logger.warning("BestCheckpointHook: metric %r not among the evaluation results (%s)",
                               self.metric, sorted(k for k in latest if "/" in k)[:20])
                self._warned = True
            return
        value, iteration = latest[self.metric]
        if not math.isfinite(value) or not self._better(value):
            return
        self.best_value, self.best_iter = float(value), int(iteration)
        last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
        self.checkpointer.save(self.file_prefix, iteration=self.best_iter)
        if last:  # fvcore tags every save as the last checkpoint; resume must keep using the periodic one
            self.checkpointer.tag_last_checkpoint(os.path.basename(last))
        if comm.is_main_process():
            with open(self._record_path, "w") as f:
                json.dump({"metric": self.metric, "value": self.best_value, "iteration": self.best_iter}, f)
            logger.info("New best %s = %.4f at iteration %d: saved %s.pth", self.metric, self.best_value,
                        self.best_iter, self.file_prefix)

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self.eval_period > 0 and next_iter % self.eval_period == 0 and next_iter != self.trainer.max_iter:
            self._check()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._check()

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_iter": self.best_iter, "metric": self.metric}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("metric", self.metric) == self.metric:
            self.best_value, self.best_iter = state.get("best_value"), state.get("best_iter")
        if os.path.exists(self._record_path):  # the best model file on disk wins: it may be newer
            with open(self._record_path) as f:
                rec = json.load(f)
            if rec.get("metric") == self.metric:
                self.best_value, self.best_iter = rec["value"], rec["iteration"]
        if self.best_value is not None:
            logger.info("BestCheckpointHook: resumed with best %s = %.4f (iteration %s)", self.metric,
                        self.best_value, self.best_iter)


VALIDATION_PREFIX = "validation"


def trained(iteration: int, max_iter: int) -> int:
    """Training steps done when the event storage's iteration is ``iteration``: detectron2 records step k's
    results at k - 1, and the end of training's at max_iter."""
    return min(int(iteration) + 1, int(max_iter))


class ValidationHook(HookBase):
    """Every ``eval_period`` iterations and after the last one, ``evaluate()`` (the validation sets' flat metrics,
    e.g. {"validation/patient/auc": 0.7}) goes into the event storage, so into metrics.json and TensorBoard,
    and into OUTPUT_DIR/validation_curve.json ([{"iteration": i, "iterations_trained": n, metric: value, ...}]
    with i as metrics.json records it and n the steps done: the learning curve; on
    --resume the points after the checkpoint resumed from are dropped, as they are evaluated again).
    detectron2's EvalHook does the same for DATASETS.TEST; this hook takes its place when a validation set is
    named, so no test set is read during training."""

    def __init__(self, eval_period: int, evaluate: Callable[[], dict[str, float]], output_dir: str) -> None:
        self.eval_period = eval_period
        self.evaluate = evaluate
        self.path = os.path.join(output_dir, CURVE_FILE)
        self.curve: list[dict[str, Any]] = []

    def before_train(self) -> None:
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.curve = [p for p in json.load(f) if p["iteration"] < self.trainer.start_iter]

    def _do_eval(self) -> None:
        results = self.evaluate()
        # metrics.json's iteration: the step just done, max_iter after the last one (detectron2's after_train)
        iteration = self.trainer.storage.iter
        if results:
            self.trainer.storage.put_scalars(**results, smoothing_hint=False)
            self.curve.append({"iteration": iteration, "iterations_trained": trained(iteration, self.trainer.max_iter),
                               **{k: float(v) for k, v in results.items()}})
            if comm.is_main_process():
                atomic_write_json(self.curve, self.path)
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self.eval_period > 0 and next_iter % self.eval_period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()


class FinalTestHook(HookBase):
    """After the last iteration: ``test(weights_file or None, folder)`` evaluates DATASETS.TEST on the final
    model into OUTPUT_DIR/inference_final/ and on the checkpoint BestCheckpointHook chose on validation data into
    OUTPUT_DIR/inference/ (eval_results.json there is the run's test result), and OUTPUT_DIR/selection.json says
    which checkpoint was chosen, by which rule and at which validation value. When no validation evaluation gave a
    finite value there is no chosen checkpoint: the final one is tested into inference/ too, and selection.json
    says so."""

    def __init__(self, best: BestCheckpointHook, test: Callable[[str | None, str], Any], output_dir: str,
                 validation_set: str) -> None:
        self.best = best
        self.test = test
        self.output_dir = output_dir
        self.validation_set = validation_set

    def after_train(self) -> None:
        if self.trainer.iter + 1 < self.trainer.max_iter:
            return
        final_iter = self.trainer.max_iter
        self.test(None, FINAL_DIR)
        best_file = os.path.join(self.output_dir, self.best.file_prefix + ".pth")
        # the main process's choice on every process (only it sees the validation metrics): all test one model
        best_iter, best_value = comm.all_gather((self.best.best_iter, self.best.best_value))[0]
        chosen = best_iter is not None and os.path.exists(best_file)
        best_iter = int(best_iter) if chosen else final_iter
        if chosen:
            self.test(best_file, "inference")
        else:
            logger.warning("No validation evaluation gave a finite %s: the final checkpoint is tested",
                           self.best.metric)
            self.test(None, "inference")
        if comm.is_main_process():
            atomic_write_json({
                "rule": f"highest {self.best.metric} on {self.validation_set} over the evaluations every "
                        f"TEST.EVAL_PERIOD iterations and at the end (the first one wins a tie)",
                "metric": self.best.metric, "validation_set": self.validation_set,
                "selected": {"weights": os.path.basename(best_file) if chosen else "model_final.pth",
                             "iteration": best_iter, "iterations_trained": trained(best_iter, final_iter),
                             "value": best_value if chosen else None},
                "final": {"weights": "model_final.pth", "iteration": final_iter, "iterations_trained": final_iter},
                "test_results": {"selected": "inference/eval_results.json",
                                 "final": "inference_final/eval_results.json"},
            }, os.path.join(self.output_dir, SELECTION_FILE))

