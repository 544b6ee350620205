"""Experiments made of several training runs, and the logic of the commands that run them: rows of configs
trained, reused or resumed and compared (:mod:`.rows`, tools/run_ablation.py), the demo with its operating points
(:mod:`.demo`, tools/demo.py), the budget curve over training lengths (:mod:`.budget_curve`), patient-disjoint
cross-validation (:mod:`.cross_validation`, tools/cross_validate.py), the phantom's measured difficulty
(:mod:`.difficulty`, tools/phantom_difficulty.py) and finished runs kept without their weights and put back
(:mod:`.archive`, tools/archive_runs.py).

Each training runs in its own process through mammo_tl.engine.launcher (tools/train_net.py's command line). It may
use engine, evaluation, data, checkpoint and config; never inference, export or serve (tests/test_layers.py).
"""
