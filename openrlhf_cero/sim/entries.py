"""Bench entries with a rollout scheduler: ``ALLOCATOR+SCHEDULER`` (``uniform+cbs``, ``cero+cbs``).

The allocator axis (how many rollouts each prompt gets) and the scheduler axis (which
drawn and buffered rollouts train) combine as in the trainer (``--rollout_allocator cero
--rollout_scheduler cbs``). The bench names a combination by joining the two names, so a
table compares ``cero`` with ``cero+cbs`` on the same seeds; an entry without ``+`` runs
without a scheduler, exactly as before. Kept apart from cli/bench.py, which was long enough.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.schedulers.base import SchedulerError
from openrlhf_cero.schedulers.registry import available_schedulers, scheduler_class
from openrlhf_cero.sim.runner import RunRecord, run_allocator
from openrlhf_cero.sim.scenario import Scenario, load_overrides

SCHEDULER_SEPARATOR = "+"
SCHEDULER_KEY = "scheduler"  # in an entry's options: the scheduler's settings (from --scheduler-options)


def split_entry(name: str) -> tuple[str, str | None]:
    """``"cero+cbs"`` -> ("cero", "cbs"); ``"cero"`` -> ("cero", None)."""
    allocator, _, scheduler = name.partition(SCHEDULER_SEPARATOR)
    return allocator, scheduler if _ else None


def parse_scheduler_options(text: str | None, allocators: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"cbs": {"buffer_size": 256}}``: settings of each scheduler named by an entry."""
    options = load_overrides(text)
    used = {split_entry(a)[1] for a in allocators} - {None}
    for name, opts in options.items():
        if name not in used:
            raise AllocatorError(
                f"--scheduler-options has settings for {name!r}, which no entry names (entries: {','.join(allocators)}; "
                f"schedulers: {', '.join(available_schedulers())})"
            )
        if not isinstance(opts, Mapping):
            raise AllocatorError(f"--scheduler-options[{name!r}] must be a mapping of setting to value, got {opts!r}")
        known = {spec.name for spec in getattr(scheduler_class(name), "options", ())}
        unknown = sorted(set(opts) - known - {"seed"})
        if unknown and known:
            raise AllocatorError(
                f"unknown setting(s) {', '.join(unknown)} for scheduler {name!r}; its settings: {', '.join(sorted(known))}"
            )
    return {name: dict(opts) for name, opts in options.items()}


def entry_options(
    name: str, allocator_options: Mapping[str, Mapping[str, Any]], scheduler_options: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The options :func:`run_entry` takes for entry ``name``: its allocator's (the entry's own,
    else its allocator's), plus under SCHEDULER_KEY its scheduler's settings."""
    allocator, scheduler = split_entry(name)
    options = dict(allocator_options.get(name) or allocator_options.get(allocator) or {})
    if scheduler is not None:
        options[SCHEDULER_KEY] = {"name": scheduler, **dict(scheduler_options.get(scheduler) or {})}
    return options or None


def run_entry(
    scenario: Scenario,
    name: str,
    seed: int,
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RunRecord:
    """One run of a bench entry (an allocator, optionally ``+SCHEDULER``), options as :func:`entry_options`
    gives them; the record is named after the entry."""
    options = dict(options or {})
    scheduler = options.pop(SCHEDULER_KEY, None)
    if scheduler is None and split_entry(name)[1] is not None:
        scheduler = split_entry(name)[1]
    try:
        record = run_allocator(scenario, split_entry(name)[0], seed, options or None, on_step=on_step, scheduler=scheduler)
    except SchedulerError as exc:
        raise AllocatorError(str(exc)) from None
    record.allocator = name
    return record
