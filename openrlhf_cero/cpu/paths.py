"""Where CPU mode keeps files that the driver and every Ray worker must agree on."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

#: Directory holding the stand-in ``vllm`` package (added to ``sys.path`` by install()).
VLLM_STANDIN_DIR = Path(__file__).resolve().parent / "vllm_standin"

#: Directory that contains the ``openrlhf_cero`` package, so Ray workers can import it
#: even when the project is not pip-installed.
PACKAGE_PARENT_DIR = Path(__file__).resolve().parents[2]


def torch_extensions_dir() -> str:
    """DeepSpeed's JIT-build cache: ``$TORCH_EXTENSIONS_DIR`` if set, else a per-user,
    per-environment default.

    A fixed default (rather than torch's own, which depends on the Python/torch
    build) lets ``prebuild_ops`` and the trainer processes meet without any
    configuration; ``ray_init_kwargs`` forwards it to the workers. It has one folder per
    Python environment (a hash of ``sys.prefix``): a build's ninja file holds that
    environment's include paths, so two clones with their own ``.venv`` sharing one folder
    would rebuild the ops (minutes) each time the other one ran.
    """
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    if configured:
        return configured
    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return str(Path.home() / ".cache" / "openrlhf_cero" / "torch_extensions" / environment)
