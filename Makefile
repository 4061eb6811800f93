# `make run` trains the offline default (ResNet-20 on scikit-learn's digits); `make test` runs the suite.
# Both create .venv and install requirements.txt on first use, and skip that when it is up to date.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
WORKDIR ?= runs/digits_resnet20
TEST_ARGS ?=

.PHONY: setup run test table benchmark clean

setup: $(INSTALLED)

$(INSTALLED): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

run: $(INSTALLED)
	$(PYTHON) -m resnet_jax.main --config configs/digits.py:resnet20 --workdir $(WORKDIR)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q -n 2 $(TEST_ARGS)

table: $(INSTALLED)
	$(PYTHON) -m resnet_jax.model_table

clean:
	rm -rf runs
