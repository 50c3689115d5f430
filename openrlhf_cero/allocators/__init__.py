"""Rollout allocators: pure numpy/scipy, no torch, Ray or OpenRLHF (see base.py for the contract)."""

from openrlhf_cero.allocators.base import AllocatorError, DamagedStateError, RolloutAllocator
from openrlhf_cero.allocators.ids import prompt_id, prompt_ids
from openrlhf_cero.allocators.registry import (
    allocator_class,
    available_allocators,
    create_allocator,
    register_allocator,
)

__all__ = [
    "AllocatorError",
    "DamagedStateError",
    "RolloutAllocator",
    "allocator_class",
    "available_allocators",
    "create_allocator",
    "prompt_id",
    "prompt_ids",
    "register_allocator",
]
