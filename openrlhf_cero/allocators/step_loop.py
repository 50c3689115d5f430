"""One training step's allocation loop, shared by the OpenRLHF generator and the simulator.

A step fills a budget of trained rollouts. Each *cycle* takes prompts, lets the
allocator plan, draws rollouts round by round (``extend``) until it asks for no more,
then ``finish`` says which groups train. Kept groups that pass the caller's own filter
(OpenRLHF's dynamic filtering) fill the budget; if some budget is left (groups skipped
or filtered), the next cycle takes more prompts, until the budget is met or the data
ends. Keeping this loop in one place is what makes the simulator measure the same
procedure the trainer runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, RolloutAllocator

H = TypeVar("H")  # whatever identifies a prompt to the caller (text + label, an index, ...)

# take_prompts(k) -> (prompt ids, handles): up to k prompts, fewer only when the data ends.
TakePrompts = Callable[[int], tuple[np.ndarray, Sequence[H]]]
# draw(handles, counts) -> per prompt (samples, rewards or None); count 0 gives ([], empty).
Draw = Callable[[Sequence[H], np.ndarray], Sequence[tuple[list[Any], np.ndarray | None]]]
# accept(rewards) -> whether a kept group trains (e.g. OpenRLHF's dynamic filtering).
Accept = Callable[[np.ndarray], bool]

# Rounds of extend within one cycle before the allocator is deemed stuck.
MAX_ROUNDS_PER_CYCLE = 64


@dataclass
class Group(Generic[H]):
    prompt_id: int
    handle: H
    samples: list[Any]
    rewards: np.ndarray | None


@dataclass
class StepOutcome(Generic[H]):
    groups: list[Group[H]] = field(default_factory=list)
    rollouts_drawn: int = 0
    prompts_consumed: int = 0
    cycles: int = 0
    groups_filtered: int = 0  # kept by the allocator, dropped by ``accept``
    exhausted: bool = False  # the data ended during this step

    @property
    def rollouts_trained(self) -> int:
        return sum(len(g.samples) for g in self.groups)


def run_step(
    allocator: RolloutAllocator,
    budget: int,
    take_prompts: TakePrompts,
    draw: Draw,
    *,
    accept: Accept | None = None,
    max_cycles: int | None = None,
) -> StepOutcome:
    """Fill ``budget`` trained rollouts; see the module docstring.

    An allocator whose ``variable_step_total`` attribute is true decides the step's total
    itself (at most ``budget``): one cycle, no refill.

    ``max_cycles`` caps the refills (default: the allocator's ``max_cycles`` attribute,
    else unlimited, as OpenRLHF's dynamic filtering is); reaching it is an error.
    """
    if max_cycles is None:
        max_cycles = getattr(allocator, "max_cycles", None)
    outcome: StepOutcome = StepOutcome()
    remaining = int(budget)
    while remaining > 0:
        if max_cycles is not None and outcome.cycles >= max_cycles:
            raise AllocatorError(
                f"{allocator.name} filled only {budget - remaining} of {budget} rollouts of this step after "
                f"{outcome.cycles} cycles of prompts; {getattr(allocator, 'max_cycles_hint', 'raise the cap')}"
            )
        wanted = allocator.prompts_wanted(remaining)
        prompt_ids, handles = take_prompts(wanted)
        prompt_ids = np.asarray(prompt_ids, dtype=np.uint64)
        outcome.prompts_consumed += len(handles)
        if len(handles) < wanted:
            outcome.exhausted = True
        if not len(handles):
            break
        outcome.cycles += 1
        # With fewer prompts than wanted (end of data), scale the budget down in proportion,
        # as OpenRLHF trains a short last batch.
        cycle_budget = remaining if len(handles) == wanted else remaining * len(handles) // wanted
        groups, drawn = _run_cycle(allocator, prompt_ids, handles, cycle_budget, draw)
        outcome.rollouts_drawn += drawn
        for group in groups:
            if accept is not None and group.rewards is not None and not accept(group.rewards):
                outcome.groups_filtered += 1
                continue
            if len(group.samples) > remaining:
                raise AllocatorError(
                    f"{allocator.name} kept a group of {len(group.samples)} rollouts with only {remaining} "
                    "left in the step's budget"
                )
            outcome.groups.append(group)
            remaining -= len(group.samples)
        if outcome.exhausted:
            break
        if getattr(allocator, "variable_step_total", False):
            break  # the allocator paced this step's total itself (CERO's global budget mode)
    return outcome


def _run_cycle(
    allocator: RolloutAllocator,
    prompt_ids: np.ndarray,
    handles: Sequence[H],
    budget: int,
    draw: Draw,
) -> tuple[list[Group[H]], int]:
    samples: list[list[Any]] = [[] for _ in handles]
    rewards: list[np.ndarray | None] = [np.zeros(0) for _ in handles]
    counts = allocator.plan(prompt_ids, budget)
    drawn = 0
    rounds = 0
    while counts.any():
        rounds += 1
        if rounds > MAX_ROUNDS_PER_CYCLE:
            raise AllocatorError(f"{allocator.name} asked for more than {MAX_ROUNDS_PER_CYCLE} rounds in one cycle")
        results = draw(handles, counts)
        drawn += int(counts.sum())
        for i, (new_samples, new_rewards) in enumerate(results):
            if len(new_samples) != counts[i]:
                raise AllocatorError(f"draw returned {len(new_samples)} samples for a count of {counts[i]}")
            samples[i].extend(new_samples)
            if new_rewards is None or rewards[i] is None:
                rewards[i] = None
            else:
                rewards[i] = np.concatenate([rewards[i], np.asarray(new_rewards, dtype=np.float64)])
        if any(r is None for r in rewards):
            break  # outcomes arrive after generation: one round, no extension
        counts = allocator.extend(prompt_ids, rewards)
    observed = None if any(r is None for r in rewards) else rewards
    keep = allocator.finish(prompt_ids, observed)
    groups = [
        Group(int(prompt_ids[i]), handles[i], samples[i], rewards[i]) for i in np.flatnonzero(keep)
    ]
    return groups, drawn
