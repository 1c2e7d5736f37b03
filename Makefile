# Two entry points that work on a fresh machine (both build .venv first, idempotently):
#   make demo   - the main job on the CPU default
#   make test   - the test suite
VENV ?= .venv
BIN := $(VENV)/bin
# Test files on this many processes, one file per process (module fixtures built once); 0: one
# process. On 2 cores two processes were slower (14.2 vs 12.5 min): the tests are CPU-bound.
TEST_WORKERS ?= 0
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
