"""The in-process "worker" that vLLM's ``worker_extension_cls`` is mixed into.

OpenRLHF's ``WorkerWrap`` expects ``self.device``, ``self.model_config.dtype``,
``self.model_runner.model.load_weights(...)`` and an initialised default
``torch.distributed`` group (rank 0 of a tensor-parallel group of one).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist


@dataclass
class ModelConfig:
    model: str
    dtype: torch.dtype
    max_model_len: int
    logprobs_mode: str


class HFWeightLoader:
    """``load_weights`` over a transformers model, by HF parameter name (as OpenRLHF sends them)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._params = dict(model.named_parameters())

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = set()
        for name, tensor in weights:
            param = self._params.get(name)
            if param is None:
                raise KeyError(
                    f"weight {name!r} does not exist in the stand-in engine's model; "
                    f"known names start with {sorted(self._params)[:3]}"
                )
            if param.shape != tensor.shape:
                raise ValueError(f"weight {name!r}: shape {tuple(tensor.shape)} != engine's {tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))
            loaded.add(name)
        return loaded


class StandInWorkerBase:
    def __init__(self, model: torch.nn.Module, model_config: ModelConfig):
        self.device = torch.device("cpu")
        self.model_config = model_config
        self.model_runner = SimpleNamespace(model=HFWeightLoader(model))
        self.rank = 0


def _ensure_single_rank_default_group() -> None:
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def build_worker(extension_cls: str, model: torch.nn.Module, model_config: ModelConfig) -> StandInWorkerBase:
    """Instantiate the worker with ``extension_cls`` ("pkg.module.Class") mixed in, as vLLM does."""
    _ensure_single_rank_default_group()
    bases: tuple[type, ...] = (StandInWorkerBase,)
    if extension_cls:
        module_name, _, class_name = extension_cls.rpartition(".")
        bases = (getattr(importlib.import_module(module_name), class_name), StandInWorkerBase)
    worker_cls = type("StandInWorker", bases, {})
    return worker_cls(model, model_config)
