#!/usr/bin/env bash
# Set up, then run the whole test suite (no GPU needed; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
${PYTHON:-python3} -m pytest -q tests "$@"
