#!/usr/bin/env bash
# Set up, then run the whole test suite (no GPU needed; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Tests only: the fused scoring kernel is checked in Triton's CPU interpreter
# (3.5's interpreter fails under numpy >= 2.4; 3.9's works).
${PYTHON:-python3} -m pip install -q triton==3.9.0
# The 15 slowest tests are listed at the end; `bash scripts/test.sh -m "not slow"` runs the fast tier.
${PYTHON:-python3} -m pytest -q --durations=15 tests "$@"
