"""BestCheckpointHook: keep the checkpoint with the best patient-level metric; survives --resume."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping

from detectron2.engine import HookBase
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer

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
