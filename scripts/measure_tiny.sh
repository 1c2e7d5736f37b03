#!/usr/bin/env bash
# Measure a tiny OpenVLA checkpoint the way the docs report it: every stage is a resumable
# vla-eval command on its own stored init states, so nothing is judged on what it was fitted on.
#
#   CKPT=configs/checkpoints/tiny-openvla-libero_object ROOT=runs/measure bash scripts/measure_tiny.sh
#
# Seeds (stored init states, per task):
#   0-4    held-out success of the baseline (the sweep docs/tiny-openvla.md reports)
#   0-1    held-out fault runs: success next to the baseline (paired), monitor and diagnose judged on them
#   10-17  monitor calibration: baseline runs (10-11 also no_flip runs, to choose its online signal)
#   18-19  the diagnose library (every fault, first 60 steps)
# (DAgger's per-round curve uses 5-6; demos and rollouts use sampled scenes, never these.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
VLA=${VLA:-"$PY -m vla_eval.cli"}
CKPT=${CKPT:-configs/checkpoints/tiny-openvla-libero_object}
ROOT=${ROOT:-runs/measure}
POLICY=(--policy openvla --checkpoint "$CKPT" --device cpu --dtype float32 --all-tasks --batch 2 --no-progress)
mkdir -p "$ROOT"
stage() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$ROOT/stages.log"; }

stage "held-out baseline, seeds 0-4"
$VLA sweep "${POLICY[@]}" --seeds 0-4 --retry-errors --out "$ROOT/heldout"
stage "held-out chapter faults, seeds 0-1 (full episodes; the baseline's are in heldout/)"
$VLA sweep "${POLICY[@]}" --seeds 0-1 --no-flip --bad-prompt --bad-unnorm --videos none --no-report --out "$ROOT/chapter-heldout"
stage "monitor calibration: baseline seeds 10-17"
$VLA sweep "${POLICY[@]}" --seeds 10-17 --videos none --no-report --out "$ROOT/calib-baseline"
stage "monitor calibration: no_flip seeds 10-11 (first 60 steps)"
$VLA sweep "${POLICY[@]}" --seeds 10-11 --no-flip --max-steps 60 --videos none --no-report --out "$ROOT/calib-noflip"
stage "diagnose library: every fault, seeds 18-19 (first 60 steps)"
$VLA drill "${POLICY[@]}" --seeds 18-19 --fault all --max-steps 60 --videos none --no-report --out "$ROOT/library"
stage "held-out other faults, seeds 0-1 (full episodes; one run tag after the other)"
others=$($PY -c "from vla_eval.faults import FAULTS; print(','.join(n for n, f in FAULTS.items() if not f.flag))")
$VLA sweep "${POLICY[@]}" --seeds 0-1 --fault "${FAULTS:-$others}" --videos none --no-report --out "$ROOT/faults-heldout"
stage "done"
