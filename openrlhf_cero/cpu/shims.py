"""CUDA calls OpenRLHF 0.11.2 makes unconditionally, made harmless on a CPU-only torch.

OpenRLHF's actor, reference and replay-buffer code call ``torch.cuda.set_device``,
``synchronize``, ``empty_cache``, ``current_device`` and ``current_stream`` and build a
``DeviceMesh`` on ``"cuda"`` without checking for a GPU. With these shims the same
code runs on CPU; nothing is patched when CUDA is available.

``current_device()`` returns :class:`CpuDeviceIndex`: it *is* the string ``"cpu"``
(so ``tensor.to(d)`` and ``torch.tensor(..., device=d)`` land on the CPU) but
formats as ``"0"``, so f-strings like ``f"cuda:{torch.cuda.current_device()}"``
still produce a device *name* (the replay buffer builds one and never moves data to it).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

_originals: dict[str, Any] = {}


class CpuDeviceIndex(str):
    """The CPU, standing in where OpenRLHF expects a CUDA device index."""

    def __new__(cls) -> "CpuDeviceIndex":
        return super().__new__(cls, "cpu")

    def __format__(self, spec: str) -> str:
        return format(0, spec)


# One function per replaced name: torch._dynamo's rule map rejects one object
# registered under several torch names.
def _set_device(device: Any) -> None:
    return None


def _synchronize(device: Any = None) -> None:
    return None


def _empty_cache() -> None:
    return None


def _current_stream(device: Any = None) -> None:
    return None


def _current_device() -> CpuDeviceIndex:
    return CpuDeviceIndex()


def _init_device_mesh(device_type: str, *args: Any, **kwargs: Any):
    original = _originals["init_device_mesh"]
    return original("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


_CUDA_REPLACEMENTS = {
    "set_device": _set_device,
    "synchronize": _synchronize,
    "empty_cache": _empty_cache,
    "current_device": _current_device,
    "current_stream": _current_stream,
}

# Modules that bind ``init_device_mesh`` by name at import time.
_MESH_IMPORTERS = ("openrlhf.utils.deepspeed.deepspeed",)


def applied() -> bool:
    return bool(_originals)


def apply() -> bool:
    """Patch torch.cuda and init_device_mesh once; returns False (and does nothing) with CUDA."""
    if torch.cuda.is_available():
        return False
    if applied():
        return True
    import torch.distributed.device_mesh as device_mesh

    for name, replacement in _CUDA_REPLACEMENTS.items():
        _originals[f"cuda.{name}"] = getattr(torch.cuda, name)
        setattr(torch.cuda, name, replacement)
    _originals["init_device_mesh"] = device_mesh.init_device_mesh
    device_mesh.init_device_mesh = _init_device_mesh
    for module_name in _MESH_IMPORTERS:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "init_device_mesh", None) is _originals["init_device_mesh"]:
            module.init_device_mesh = _init_device_mesh
    return True


def remove() -> None:
    """Undo :func:`apply` (tests use it to leave the process as they found it)."""
    import torch.distributed.device_mesh as device_mesh

    for key, original in list(_originals.items()):
        if key.startswith("cuda."):
            setattr(torch.cuda, key.removeprefix("cuda."), original)
    if "init_device_mesh" in _originals:
        device_mesh.init_device_mesh = _originals["init_device_mesh"]
        for module_name in _MESH_IMPORTERS:
            module = sys.modules.get(module_name)
            if module is not None and module.init_device_mesh is _init_device_mesh:
                module.init_device_mesh = _originals["init_device_mesh"]
    _originals.clear()
