#!/usr/bin/env bash
# The GPU recipe, one command per step (model_export/gpu.py; model_export/README.md, "GPU"):
#   here:  wheels → (lease) → there: prepare, train, poll, finish → here: unpack DIR...
#   scripts/gpu_train.sh --help          steps and expected minutes
#   scripts/gpu_train.sh STEP --help     a step's options
# Here it uses .venv's Python; on the GPU machine (no .venv there) the image's python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
exec "${PYTHON:-$py}" -m model_export.gpu "$@"
