#!/usr/bin/env bash
# Start one agent on a ood sweep: ./meta_run_ood.sh <sweep-id> [gpu-index] [count]
# Sets CUDA_VISIBLE_DEVICES to the GPU index, picks the backend from the sweep id (local-... or
# entity/project/id), runs until the sweep is drained (or <count> runs), and logs to
# <runs_root>/<sweep-id>/agents/<host>-gpu<idx>.log. Start one per GPU (or several on a CPU).
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -lt 1 ]; then echo "usage: $0 <sweep-id> [gpu-index] [count]" >&2; exit 2; fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
args=(agent "$1")
[ -n "${2:-}" ] && args+=(--gpu "$2")
[ -n "${3:-}" ] && args+=(--count "$3")
exec "$PY" sweep.py "${args[@]}"
