"""Exported models: exporting a trained model to ONNX or TorchScript with its export.json (:mod:`.exporter`,
tools/export_model.py) and running an exported model without detectron2's modeling (:mod:`.runtime`, which
tools/predict.py --model uses). The image preparation both the runtime and the predictor use is
mammo_tl.data.prepared.

It may use data, checkpoint, modeling, config and files; never engine, inference, experiments or serve
(tests/test_layers.py).
"""
