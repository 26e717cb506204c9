# make test: set up .venv (Python >= 3.12, found by tools/find_python.sh) and run the test suite.
# make train: get Fashion-MNIST (Debian's dataset-fashion-mnist) if missing, train configs/default.py
#             in $(WORKDIR), evaluate it on the test set, then evaluate it dense and under SARF and the
#             ViT methods (configs/sweeps/default.py) into $(WORKDIR)/results.md and the plot
#             (a second run resumes / re-evaluates). TRAIN_ARGS: extra train.py flags.
# make reproduce: train the two paper-like minis (14x14 grids) on Fashion-MNIST, run the
#             paper-like reduction sweeps on each (training-free), fine-tune VMamba with SARF
#             active, and write results/ (tools/reproduce.py).
# make lint: ruff check and ruff format --check (configured in pyproject.toml), as CI runs them.
# make bench: run the benchmarks in benchmarks/ (JSON lines on stdout).
# test, train, reproduce and bench run on tcmalloc where tools/find_tcmalloc.sh finds (or installs)
# it: XLA's CPU runtime re-allocates its large temporaries on every call, and the system malloc
# page-faults them in again each time (~a quarter of a CPU training step). PRELOAD= turns it off.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
TRAIN_ARGS ?=
PRELOAD ?= $(shell sh tools/find_tcmalloc.sh)
RUN = LD_PRELOAD="$(PRELOAD)" TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=68719476736

.PHONY: test lint train reproduce bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@python=$$(sh tools/find_python.sh) || exit 1; \
	  echo "using $$python"; \
	  [ -x $(PY) ] || "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt -e .
	@touch $@

test: $(STAMP)
	$(RUN) $(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

train: $(STAMP)
	@FMNIST_DIR=$(FMNIST_DIR) sh tools/get_fashion_mnist.sh
	$(RUN) $(PY) train.py --config configs/default.py --workdir $(WORKDIR) --config.data.dir=$(FMNIST_DIR) $(TRAIN_ARGS)
	$(RUN) $(PY) eval.py --workdir $(WORKDIR) --sweep configs/sweeps/default.py --weights ema

reproduce: $(STAMP)
	@FMNIST_DIR=$(FMNIST_DIR) sh tools/get_fashion_mnist.sh
	$(RUN) $(PY) tools/reproduce.py --workdir=runs/reproduce --out=results --data_dir=$(FMNIST_DIR)

bench: $(STAMP)
	$(RUN) $(PY) benchmarks/scan.py

clean:
	rm -rf $(VENV) .pytest_cache
