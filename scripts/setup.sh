#!/usr/bin/env bash
# Idempotent set-up of a CPU development machine: a virtual environment in .venv with
# torch (CPU), OpenRLHF 0.11.2 (flash-attn installed Python-only, no vLLM), this
# package in editable mode, and DeepSpeed's CPU ops pre-built into a per-user cache.
# A second run only re-checks (seconds). Override with VENV=... PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

# The stamp changes whenever the pins change, so an edit of them re-runs the install.
stamp="$VENV/.setup-$(cat scripts/setup.sh setup.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip wheel 'setuptools<81' packaging psutil ninja
  python -m pip install -q torch==2.13.0
  # flash-attn has no CPU wheel; OpenRLHF imports it, so install its Python part only.
  FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE \
    python -m pip install -q --no-build-isolation flash-attn==2.8.3
  DS_BUILD_OPS=0 python -m pip install -q --no-build-isolation openrlhf==0.11.2
  python -m pip install -q --no-build-isolation -e '.[test]'
  touch "$stamp"
fi

# DeepSpeed JIT-compiles its CPU Adam and shared-memory comm ops on first use (about
# two minutes on 2 cores); build them once here, into $TORCH_EXTENSIONS_DIR or by default
# ~/.cache/openrlhf_cero/torch_extensions/<hash of this venv>, where every later run finds them.
OPENRLHF_CERO_CPU=1 python -m openrlhf_cero.cpu.prebuild_ops
echo "setup done: $VENV ($(python -c 'import openrlhf_cero,sys; print(sys.version.split()[0])'))"
