# `make demo` and `make test` each set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: setup demo test test-fast bench-quick bench-gpu clean browser-deps data-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls the multi-GB CUDA build on CPU hosts.
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dynalay search --space digits

test: $(STAMP) browser-deps data-deps
	$(PY) -m pytest -q -ra --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not cluster and not browser"

bench-quick: $(STAMP)
	$(PY) -m benchmarks.model_speed --quick
	$(PY) -m benchmarks.agent_tradeoff --quick
	$(PY) -m benchmarks.search_efficiency --quick
	$(PY) -m benchmarks.overhead --quick

# CUDA throughput (fp32 and bf16) beside airbench's record, and a search with two trials per GPU;
# on a host without CUDA it prints one line and exits 0 (benchmarks/gpu.py).
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu --full --out benchmarks/results

# Headless Chromium for the MLflow UI test (Debian's package; Playwright's own browser download
# cannot reach its host here).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: install Debian's chromium for the browser test"; fi; }

# Fashion-MNIST's four official IDX files, from Debian's package (read offline by the
# `fashion_mnist` data set; nothing is downloaded at run time).
data-deps:
	@[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else echo "Fashion-MNIST not found: install Debian's dataset-fashion-mnist for the fashion_mnist data set"; fi; }

clean:
	rm -rf $(VENV) runs .pytest_cache
