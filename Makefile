# tbx11k-dino: `make demo` and `make test` set up .venv first when needed.
# WHEELHOUSE=DIR hands a folder of prebuilt wheels (e.g. an mmcv 2.1.0 wheel) to pip as
# --find-links.
PYTHON_VENV := .venv/bin/python
WHEELHOUSE ?=
export WHEELHOUSE

.PHONY: setup demo lint test test-quick bench clean-demo

.venv/.installed: tools/misc/setup_env.sh requirements.txt pyproject.toml
	bash tools/misc/setup_env.sh
	touch $@

setup: .venv/.installed

demo: .venv/.installed
	bash tools/misc/demo.sh

lint: .venv/.installed
	$(PYTHON_VENV) -m ruff check .

# The whole suite on TEST_WORKERS pytest-xdist workers; tests that share a training run on one
# worker (groups: tests/conftest.py). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint
	$(PYTHON_VENV) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The edit loop: every test but those marked slow (trainings, torch.compile, tool subprocesses,
# signal, kill -9 and Slurm trials); CI runs the whole suite (`make test`).
test-quick: .venv/.installed
	$(PYTHON_VENV) -m pytest -q -m "not slow"

bench: .venv/.installed
	$(PYTHON_VENV) tools/analysis_tools/benchmark.py configs/dino_tbx11k_tiny_1gpu.py

clean-demo:
	rm -rf data/tbx11k_demo work_dirs/demo
