# Two commands matter: `make run` (train the default system on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline

.PHONY: run test test-all lint bench synth clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,translate,audio,video,sweep,clap,laion,demo,browser]"
	touch $(STAMP)

# The main job: the seed report's System 1 on the synthetic default (Clotho-Moment-like pre-training,
# CASTELLA-like fine-tuning at half size), about 12 minutes on 2 CPU cores.
RUN_ARGS ?= experiment=system1 data.synthetic.scale=0.5 pretrain.max_epochs=7 train.max_epochs=8

run: $(STAMP)
	$(VENV)/bin/amr-train $(RUN_ARGS) $(ARGS)

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow" -q $(ARGS)

test-all: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check amr tests benchmarks
	$(VENV)/bin/ruff format --check amr tests benchmarks
	$(VENV)/bin/mypy amr

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
