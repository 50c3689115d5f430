"""Schedulers by name (``--rollout_scheduler NAME``); ``none`` means no scheduler at all."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from openrlhf_cero.schedulers.base import RolloutScheduler, SchedulerError

NO_SCHEDULER = "none"

# name -> "module:Class"; imported lazily so a scheduler's dependencies load only when used.
_BUILTIN = {
    "cbs": "openrlhf_cero.schedulers.cbs:ContextualBanditScheduler",
}


def available_schedulers() -> list[str]:
    return sorted(_BUILTIN)


def scheduler_class(name: str) -> type[RolloutScheduler]:
    target = _BUILTIN.get(name)
    if target is None:
        raise SchedulerError(
            f"unknown --rollout_scheduler {name!r}; valid: {NO_SCHEDULER}, {', '.join(available_schedulers())}"
        )
    module, cls = target.split(":")
    return getattr(import_module(module), cls)


def create_scheduler(name: str, **settings: Any) -> RolloutScheduler:
    """``create_scheduler("cbs", seed=0, buffer_size=512, max_staleness=4, **options)``."""
    return scheduler_class(name)(**settings)
