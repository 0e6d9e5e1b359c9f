# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; on a GPU machine override, e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
# Extra JupyterLab options of `make lab`, e.g. LAB_ARGS="--no-browser --port 8899" on a remote machine.
LAB_ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: env demo test lab benchmarks clean

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[eval,notebooks,dev]"
	touch $(STAMP)

demo: env
	$(PY) -m mudiff demo

test: env
	$(PY) -m pytest -q

lab: env
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_ARGS)

benchmarks: env
	$(PY) benchmarks/data_benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache
