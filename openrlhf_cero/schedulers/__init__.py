"""Rollout schedulers: which drawn (or buffered) rollouts a step trains on.

Framework-free like the allocators (numpy and torch, never Ray or OpenRLHF); see
base.py for the contract.
"""

from openrlhf_cero.schedulers.base import RolloutScheduler, RolloutTable, SchedulerError, Selection
from openrlhf_cero.schedulers.registry import available_schedulers, create_scheduler, scheduler_class

__all__ = [
    "RolloutScheduler",
    "RolloutTable",
    "SchedulerError",
    "Selection",
    "available_schedulers",
    "create_scheduler",
    "scheduler_class",
]
