"""``PyNcclCommunicator`` backed by gloo, so OpenRLHF's NCCL weight broadcast runs on CPU.

Same constructor and ``broadcast(tensor, src, stream)`` as vLLM's; the bytes really
travel from DeepSpeed rank 0 to each engine through a gloo group built on the
``StatelessProcessGroup``'s store. ``stream`` is accepted and ignored (no CUDA).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vllm.distributed.utils import StatelessProcessGroup


class PyNcclCommunicator:
    def __init__(self, group: StatelessProcessGroup, device: Any = None, timeout_s: float = 1800):
        self.rank = group.rank
        self.world_size = group.world_size
        self.device = torch.device("cpu")
        self.disabled = False
        store = dist.PrefixStore("openrlhf_cero_gloo_standin", group.store)
        self._group = dist.ProcessGroupGloo(store, group.rank, group.world_size, timedelta(seconds=timeout_s))

    def broadcast(self, tensor: torch.Tensor, src: int, stream: Any = None) -> None:
        if not tensor.is_contiguous():
            raise ValueError("broadcast needs a contiguous tensor (as NCCL does)")
        options = dist.BroadcastOptions()
        options.rootRank = src
        options.rootTensor = 0
        self._group.broadcast([tensor], options).wait()

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM, stream: Any = None):
        options = dist.AllreduceOptions()
        options.reduceOp = op
        self._group.allreduce([tensor], options).wait()
        return tensor
