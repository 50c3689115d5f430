#!/usr/bin/env bash
# The main job: set up (idempotent, cached), then a short real training run of a tiny
# offline-built model on CPU through our entry point, printing per-step allocation
# figures. Usage: scripts/run_demo.sh [uniform|cero|vip|pilot_commit] [-- more trainer flags]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
allocator=${1:-cero}
[ $# -gt 0 ] && shift
exec .venv/bin/python -m openrlhf_cero.cli.demo --allocator "$allocator" "$@"
