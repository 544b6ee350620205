"""Inference on stored mammograms: the predictor (:mod:`.predictor`, boxes in the original pixel grid), and
tools/predict.py's work: its options and their checks (:mod:`.options`), the loader that reads and prepares images
in worker processes (:mod:`.loader`), the bookkeeping of its output folders (locks, resume, manifests:
:mod:`.folders`) and the command itself (:mod:`.command`).

It may use export (an exported model runs through :mod:`mammo_tl.export.runtime`), outputs, evaluation, data,
checkpoint and config; never engine, experiments or serve (tests/test_layers.py).
"""
