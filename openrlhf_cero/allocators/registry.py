"""Allocators by name: each allocator is one module that registers its class here.

Third-party allocators can also be registered through the ``openrlhf.rollout_allocators``
entry-point group (the same group a natively hooked OpenRLHF reads).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, TypeVar

from openrlhf_cero.allocators.base import AllocatorError, RolloutAllocator

ENTRY_POINT_GROUP = "openrlhf.rollout_allocators"

# Modules of the allocators this package ships; imported lazily so a missing optional
# dependency of one allocator never breaks the others.
_BUILTIN_MODULES = (
    "openrlhf_cero.allocators.uniform",
    "openrlhf_cero.allocators.cero",
    "openrlhf_cero.allocators.vip",
    "openrlhf_cero.allocators.pilot_commit",
    "openrlhf_cero.allocators.testing",
)

_REGISTRY: dict[str, type[RolloutAllocator]] = {}
_loaded = False

A = TypeVar("A", bound=type[RolloutAllocator])


def register_allocator(cls: A) -> A:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise AllocatorError(f"allocator name {cls.name!r} is registered twice ({existing} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside an existing module
                raise
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.module.split(".")[0] != __name__.split(".")[0]:  # ours were imported above
            register_allocator(entry.load())


def available_allocators() -> list[str]:
    _load_all()
    return sorted(name for name, cls in _REGISTRY.items() if not getattr(cls, "test_only", False))


def registered_allocators() -> list[str]:
    """Every registered name, test-only allocators included."""
    _load_all()
    return sorted(_REGISTRY)


def allocator_class(name: str) -> type[RolloutAllocator]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise AllocatorError(
            f"unknown --rollout_allocator {name!r}; registered allocators: {', '.join(available_allocators())}"
        ) from None


def create_allocator(name: str, **settings: Any) -> RolloutAllocator:
    """``create_allocator("cero", n_samples_per_prompt=8, min_samples=2, max_samples=64, seed=0, **options)``."""
    return allocator_class(name)(**settings)
