#!/usr/bin/env bash
# Set up (idempotent, cached) and run the whole test suite, end-to-end CPU runs of the
# real OpenRLHF trainer included. Extra arguments go to pytest (e.g. -m "not e2e").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
