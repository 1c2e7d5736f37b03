# Two entry points that work on a fresh machine (both build .venv first, idempotently):
#   make demo   - the main job on the CPU default
#   make test   - the test suite
VENV ?= .venv
BIN := $(VENV)/bin
# Test files on this many processes, one file per process (module fixtures built once), each with
# its share of the cores' threads (tests/conftest.py); 0: one process. Measured on 2 cores, 491
# tests: one process 16:18, two 10:11 and 10:26, three 12:30.
TEST_WORKERS ?= 2
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(BIN)/vla-eval demo

test:
	@WITH_BROWSER=1 bash scripts/setup_env.sh
	$(BIN)/python -m pytest -q -ra --durations=20 -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: setup
	$(BIN)/vla-eval bench-sim --workers 2

clean:
	rm -rf $(VENV) runs
