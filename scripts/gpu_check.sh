#!/usr/bin/env bash
# The first-GPU check in one command (< 8 minutes on one H200), one JSON file out.
# From a fresh clone:  pip install -e ".[gpu]" && bash scripts/gpu_check.sh gpu-check.json
# bash scripts/gpu_check.sh --dry-run   (every step, its expected seconds and memory)
# bash scripts/gpu_check.sh --tiny out.json   (the whole script on a CPU, small sizes)
# The steps are the functions of scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
