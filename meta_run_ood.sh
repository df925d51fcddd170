#!/usr/bin/env bash
# One agent on a ood sweep: ./meta_run_ood.sh <sweep-id> [gpu-index] [count]
# Sets CUDA_VISIBLE_DEVICES to the GPU index, picks the backend from the sweep id (local-... or
# entity/project/id), runs until the sweep is drained (or <count> runs) and logs to
# <runs_root>/<sweep-id>/agents/<host>-gpu<idx>.log. Start one per GPU, or several on a CPU.
cd "$(dirname "$0")" && exec "${PYTHON:-.venv/bin/python}" sweep.py agent "$@"
