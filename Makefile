# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build of torch. pip on this machine finds it on local disk; on a GPU machine install
# your CUDA build of torch into .venv first (`make TORCH_SPEC= venv` skips this step).
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo app test test-fast clean train-othello train-pycode saes

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	@if [ -n "$(TORCH_SPEC)" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) (CPU build)"; $(PY) -m pip install "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/interp demo

app: venv
	$(VENV)/bin/interp app runs/demo

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# Reproduce the shipped embedded models (about an hour each on a 2-core CPU).
train-othello: venv
	$(VENV)/bin/interp train-model othello

train-pycode: venv
	$(VENV)/bin/interp train-model pycode

# Rebuild the SAEs shipped in saes/ (harvest, train, evaluate, register).
saes: venv
	$(PY) -m interp.sae.release --force

clean:
	rm -rf $(VENV) runs .pytest_cache
