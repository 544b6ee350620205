"""Training, as detectron2's ``engine`` is: the trainer (:mod:`.trainer`), its hooks (validation, best-checkpoint
selection, the final test: :mod:`.hooks`), the launch of one run on one GPU, several or the CPU (:mod:`.launcher`,
what tools/train_net.py runs), the checks made before a run starts (:mod:`.preflight`), the record of the data a run
was made from that ``--resume`` and reuse check (:mod:`.run_inputs`), and choosing a trained run's operating points on
a validation set (:mod:`.choose_points`, tools/operating_points.py).

It may use the floors below it: config, files, checkpoint, modeling, data and evaluation; never export, inference,
experiments or serve (tests/test_layers.py).
"""
from .trainer import Trainer, build_optimizer, build_train_loader

__all__ = ["Trainer", "build_optimizer", "build_train_loader"]
