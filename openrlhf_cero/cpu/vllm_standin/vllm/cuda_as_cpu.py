"""Run code written for a CUDA worker (OpenRLHF's ``WorkerWrap``) on CPU, unchanged.

``WorkerWrap.update_weight`` allocates its receive buffer with ``device="cuda"``;
inside :class:`CudaAsCpu` any tensor placed on a CUDA device lands on the CPU instead.
It is scoped to the stand-in's ``collective_rpc`` calls, not installed globally.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.split(":")[0] == "cuda"


class CudaAsCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func in (torch.Tensor.cuda,):
            return args[0]
        if func is torch.Tensor.to:
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)
