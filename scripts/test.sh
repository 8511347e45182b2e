#!/usr/bin/env bash
# The whole test suite. pytest's exit code 5 (no tests collected) is a failure, as any non-zero code.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False
python -m pytest -q -ra "$@"
