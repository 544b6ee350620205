# mammo_tl: everything a fresh machine needs goes through `make install`.
#   make demo    the paper in miniature on built-in synthetic mammograms (CPU, minutes)
#   make test    the linter, then the test suite (CPU)
#   make lint    ruff (rules in ruff.toml)
#   make bench   benchmark tables (bench/)
# torch's build (docs/getting_started.md, "Install"): CPU only: make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#   (PyPI's default torch 2.14.1 is the CUDA 13 build: driver 580+); other versions: TORCH_VERSION=... TORCHVISION_VERSION=...
# Official detectron2 from GitHub instead of the PyPI wheel: make install DETECTRON2_SOURCE=git

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
TORCH_INDEX_URL ?=
DETECTRON2_SOURCE ?= wheel
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := $(VENV)/constraints.txt
STAMP := $(VENV)/.mammo_tl-installed
INDEX := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),)

.PHONY: install demo lint test bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt tools/install_detectron2.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	cat constraints.txt > $(CONSTRAINTS)
	printf 'torch==%s\ntorchvision==%s\n' $(TORCH_VERSION) $(TORCHVISION_VERSION) >> $(CONSTRAINTS)
	$(PY) -c "import torch, torchvision" 2>/dev/null && \
	  $(PY) -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.split('+')[0] == '$(TORCH_VERSION)' and torchvision.__version__.split('+')[0] == '$(TORCHVISION_VERSION)'))" || \
	  $(PIP) install $(INDEX) -c $(CONSTRAINTS) torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PY) tools/install_detectron2.py --source $(DETECTRON2_SOURCE) -c $(CONSTRAINTS)
	$(PIP) install -c $(CONSTRAINTS) -e '.[dev]'
	$(PY) -c "import mammo_tl; mammo_tl.check_install()"
	touch $(STAMP)

demo: install
	$(PY) tools/demo.py --output output/demo

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: install
	$(PY) bench/run_all.py --output output/bench

clean:
	rm -rf output build *.egg-info .ruff_cache
