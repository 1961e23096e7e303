# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CPU build of torch. pip on this machine finds it on local disk; on a GPU machine install
# your CUDA build of torch into .venv first (`make TORCH_SPEC= venv` skips this step).
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv browser demo app test test-fast clean train-othello train-pycode saes bench \
	bench-transcoders bench-graphs tracer-venv tracer-venv-if-possible

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

# Chromium for tests/test_app_browser.py (Playwright drives it through executable_path; no
# `playwright install`): Debian's package, installed only when no chromium is on PATH and
# apt-get exists. Without root or a mirror it says so and the browser test skips.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
		&& command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the browser test"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1 || \
		  { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null; }; } || \
		echo "could not install chromium: tests/test_app_browser.py will skip"; fi

test: venv browser tracer-venv-if-possible
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# SAE training speed against peers (SAELens, dictionary_learning, sparsify), in a venv of
# their own so they never touch .venv. dictionary-learning 0.1.0 pins nnsight<0.4, whose
# torchvision would pull a CUDA torch: it and nnsight go in without their dependencies, plus
# python-socketio, the one thing nnsight needs to import (dictionary_learning imports it).
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --upgrade pip >/dev/null
	@if [ -n "$(TORCH_SPEC)" ] && ! $(BENCH_PY) -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) (CPU build)"; $(BENCH_PY) -m pip install "$(TORCH_SPEC)"; fi
	$(BENCH_PY) -m pip install -e .
	$(BENCH_PY) -m pip install "sae-lens>=6.0,<7" "eai-sparsify==1.3.3" "python-socketio[client]>=5"
	$(BENCH_PY) -m pip install --no-deps "dictionary-learning==0.1.0" "nnsight==0.3.7"
	$(BENCH_PY) -c "import sae_lens, sparsify, dictionary_learning.trainers.top_k" >/dev/null
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_PY) benchmarks/sae_speed.py

# Transcoder training speed (issue 15): our PLT, skip PLT and CLT steps against sparsify's
# transcoders (`--transcode`, `skip_connection`) and the bare encoder matmuls, same venv.
bench-transcoders: $(BENCH_VENV)/.installed
	$(BENCH_PY) benchmarks/transcoder_speed.py

# Attribution graphs (benchmarks/graph_speed.py): ours (.venv) against circuit-tracer 0.5.0
# (.venv-tracer, built here when it can be) on othello/plt and a 60-token game: time, peak
# RSS, the two adjacency matrices compared; then --long: peak RSS and time on prompts of 128
# to 2,048 tokens (a random model of pycode's shape). Exits 1 if the matrices disagree.
bench-graphs: venv tracer-venv-if-possible
	$(PY) benchmarks/graph_speed.py --long

# circuit-tracer 0.5.0 (pins transformers<=4.57.3, which .venv's TransformerLens does not
# take), in a venv of its own, to check our exports with circuit-tracer's own loader
# (tests/test_tracer_export.py; it skips without this venv). About 1.5 minutes from PyPI.
# `make test` builds it; where that fails (no PyPI), it says so and those tests skip.
TRACER_VENV := .venv-tracer
TRACER_PY := $(TRACER_VENV)/bin/python

$(TRACER_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRACER_VENV)
	$(TRACER_PY) -m pip install --upgrade pip >/dev/null
	@if [ -n "$(TORCH_SPEC)" ] && ! $(TRACER_PY) -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) (CPU build)"; $(TRACER_PY) -m pip install "$(TORCH_SPEC)"; fi
	@if [ -n "$(TORCH_SPEC)" ] && $(TRACER_PY) -m pip install --dry-run -e . "circuit-tracer==0.5.0" \
		| grep '^Would install' | grep -qE ' (torch|nvidia-[a-z0-9-]+)-[0-9]'; then \
		echo "circuit-tracer would replace the CPU torch (a CUDA build): not installing"; exit 1; fi
	$(TRACER_PY) -m pip install -e . "circuit-tracer==0.5.0"
	$(TRACER_PY) -c "import circuit_tracer, interp.sae.tracer_export" >/dev/null
	touch $@

tracer-venv: $(TRACER_VENV)/.installed

# for `make test`: build it when it can, else go on (the tracer tests then skip)
tracer-venv-if-possible:
	@$(MAKE) --no-print-directory tracer-venv >$(TRACER_VENV).log 2>&1 || \
		echo "could not build $(TRACER_VENV) (see $(TRACER_VENV).log): the circuit-tracer checks of tests/test_tracer_export.py will skip"

# Reproduce the shipped embedded models (about an hour each on a 2-core CPU).
train-othello: venv
	$(VENV)/bin/interp train-model othello

train-pycode: venv
	$(VENV)/bin/interp train-model pycode

# Rebuild the SAEs shipped in saes/ (harvest, train, evaluate, register).
saes: venv
	$(PY) -m interp.sae.release --force

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(TRACER_VENV) $(TRACER_VENV).log runs .pytest_cache
