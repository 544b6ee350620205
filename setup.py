from setuptools import find_packages, setup

setup(
    name="mammo_tl",
    version="0.1.0",
    description=(
        "Detectron2 plugin for mammography lesion detection that learns from unannotated "
        "negative images (Xiao et al., 'Learning from Suspected Target', MICCAI 2019)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mammo_tl", "mammo_tl.*"]),
    # torch, torchvision and detectron2 are installed first by `make install` (see README):
    # detectron2 is not on PyPI under its own name and torch builds differ per machine.
    install_requires=[
        "numpy<2",
        "fvcore",
        "iopath",
        # headless build: the same OpenCV without the GUI/libGL dependency, which servers lack
        "opencv-python-headless",
        "pycocotools",
        "pydicom>=2.4",
        # decoders pydicom uses for compressed mammograms: JPEG 2000, JPEG-LS/Lossless, RLE
        "pylibjpeg>=2",
        "pylibjpeg-openjpeg",
        "pylibjpeg-libjpeg",
        "pylibjpeg-rle",
        # DICOM presentation states and TID 1500 reports (tools/predict.py --dicom-out); 0.28.2 is the
        # version tested, and the one pip resolves beside numpy<2
        "highdicom>=0.28",
        # tools/serve.py: the DICOM node (Storage SCP, C-STORE of the results). The node bounds what a sender can
        # make it read by wrapping pynetdicom's connection handler, socket reads and DIMSE assembly
        # (mammo_tl/serve/node.py), internals checked against 3.0.4 only: held to the 3.0 series
        "pynetdicom>=3.0.4,<3.1",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "tabulate",
        # image headers (TIFF/JPEG sizes before decoding); also a torch dependency
        "Pillow",
    ],
    extras_require={
        # tools/export_model.py --format onnx and tools/predict.py --model model.onnx (1.23 / 1.32 tested)
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        # `make lint` (run first by `make test`) runs ruff, whose rules change between minor versions: a range;
        # the tests also export and run ONNX models
        "dev": ["pytest>=7", "pytest-xdist", "hypothesis", "ruff>=0.17,<0.18", "onnx>=1.16", "onnxruntime>=1.18"],
    },
)
