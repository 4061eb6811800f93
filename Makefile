# `make run` trains the offline default (ResNet-20 on scikit-learn's digits); `make test` runs the suite.
# Both create .venv and install requirements.txt on first use, and skip that when it is up to date.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WORKDIR ?= runs/digits_resnet20
TEST_ARGS ?=

.PHONY: setup run test lint format table parity benchmark accelerator clean

setup: $(INSTALLED)

# The package itself last, editable and without its dependencies (requirements.txt has them, pinned):
# quick, offline, and the `resnet-jax` command runs this checkout's code.
$(INSTALLED): requirements.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: $(INSTALLED)
	$(PYTHON) -m resnet_jax.main --config configs/digits.py:resnet20 --workdir $(WORKDIR)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q -n 2 $(TEST_ARGS)

# The formatter (pyink: Google's style) and the linter (ruff), configured in pyproject.toml.
lint: $(INSTALLED)
	$(VENV)/bin/pyink --check --quiet .
	$(VENV)/bin/ruff check --quiet .

format: $(INSTALLED)
	$(VENV)/bin/pyink --quiet .
	$(VENV)/bin/ruff check --quiet --fix .

# PyTorch is never a dependency of the project: the parity checks run it from a side environment
# (torch 2.14.1/torchvision 0.29.1 are the CUDA wheels on x86_64, several GB; they run on the CPU).
TORCH_VENV ?= .venv-torch
TORCH_INSTALLED := $(TORCH_VENV)/.installed

$(TORCH_INSTALLED): requirements.txt
	test -x $(TORCH_VENV)/bin/python || python3 -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 timm==1.0.31 \
	    $$(grep -E '^(jax|jaxlib|flax|optax|chex|numpy|safetensors|pillow|ml_collections|absl-py)==' requirements.txt | cut -d' ' -f1)
	touch $@

# Our networks and ImageNet eval preprocessing (the centre crop and the ten crops) against
# torchvision's and the CIFAR reference's; then the small reference outputs in tests/data that the
# ordinary suite checks without PyTorch (tests/test_reference_outputs.py) are written again.
parity: $(INSTALLED) $(TORCH_INSTALLED)
	$(TORCH_VENV)/bin/python -m benchmarks.reference_parity
	$(TORCH_VENV)/bin/python -m benchmarks.reference_parity --write_reference tests/data
	$(PYTHON) -m benchmarks.preprocessing_parity --torch_python $(TORCH_VENV)/bin/python

# The accelerator benchmark (benchmarks/accelerator.py): full sizes on a GPU or TPU, ACCELERATOR_ARGS=--quick
# on a CPU; PyTorch beside it from the side environment when it is there.
ACCELERATOR_ARGS ?=
accelerator: $(INSTALLED)
	$(PYTHON) -m benchmarks.accelerator $(ACCELERATOR_ARGS) \
	    $$(test -x $(TORCH_VENV)/bin/python && echo --torch_python $(TORCH_VENV)/bin/python)

table: $(INSTALLED)
	$(PYTHON) -m resnet_jax.models.table

clean:
	rm -rf runs
