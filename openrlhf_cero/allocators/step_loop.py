"""One training step's allocation loop, shared by the OpenRLHF generator and the simulator.

A step fills a budget of trained rollouts. Each *cycle* takes prompts, lets the
allocator plan, draws rollouts round by round (``extend``) until it asks for no more,
then ``finish`` says which groups train. Kept groups that pass the caller's own filter
(OpenRLHF's dynamic filtering) fill the budget; if some budget is left (groups skipped
or filtered), the next cycle takes more prompts, until the budget is met or the data
ends. Keeping this loop in one place is what makes the simulator measure the same
procedure the trainer runs.

If the step still has budget left when its cycle cap (``max_cycles``) is reached or the
data ends, it does not fail and does not train nothing in silence: the groups drawn but
not kept this step are candidates for the allocator's fallback
(:meth:`RolloutAllocator.fallback`); the chosen ones are topped up, trained, counted in
the allocator's ``fallback_groups`` metric, and one warning is logged for the step. Only
the best candidates are held between cycles (the allocator's fallback choice for the
budget left), so a long step does not hold every skipped rollout in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, RolloutAllocator

logger = logging.getLogger(__name__)

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
    capped: bool = False  # the cycle cap was reached with budget left
    fallback_groups: int = 0  # groups the allocator's fallback chose (in ``groups`` unless ``accept`` dropped them)
    warning: str | None = None  # the warning logged for this step, if any

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
    itself (at most ``budget``): one cycle, no refill, no fallback.

    ``max_cycles`` caps the refills (default: the allocator's ``max_cycles`` attribute,
    else unlimited, as OpenRLHF's dynamic filtering is); reaching it with budget left,
    like the data ending, leads to the allocator's fallback, never to an error.
    """
    if max_cycles is None:
        max_cycles = getattr(allocator, "max_cycles", None)
    outcome: StepOutcome = StepOutcome()
    remaining = int(budget)
    candidates: list[Group[H]] = []  # drawn but not kept this step: the fallback's choice
    while remaining > 0:
        if max_cycles is not None and outcome.cycles >= max_cycles:
            outcome.capped = True
            break
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
        groups, skipped, drawn = _run_cycle(allocator, prompt_ids, handles, cycle_budget, draw)
        outcome.rollouts_drawn += drawn
        remaining = _train(allocator, groups, remaining, accept, outcome)
        if allocator.variable_step_total:
            candidates = []
            break  # the allocator paced this step's total itself (CERO's global budget mode)
        candidates = _best_candidates(allocator, candidates + skipped, outcome.groups, remaining)
        if outcome.exhausted:
            break
    filled = int(budget) - remaining
    room = min(remaining, _target(allocator, int(budget), outcome) - filled)
    if room > 0 and candidates:
        remaining -= room - _fallback(allocator, candidates, room, draw, accept, outcome)
    _warn(allocator, budget, filled, remaining, outcome)
    return outcome


def _target(allocator: RolloutAllocator, budget: int, outcome: StepOutcome) -> int:
    """What the step should train: the whole budget, unless the data ended before the step
    took the prompts of a full batch (budget / n, OpenRLHF's ``rollout.batch_size``); then
    one group of n per prompt taken, as OpenRLHF trains a short last batch. (Not the
    allocator's ``prompts_wanted``: Pilot-Commit's pool is a search width, up to 16 times
    the batch, not the data a step needs.)"""
    n = allocator.n_samples_per_prompt
    if not outcome.exhausted or outcome.prompts_consumed * n >= budget:
        return budget
    return outcome.prompts_consumed * n


def _train(
    allocator: RolloutAllocator, groups: list[Group[H]], remaining: int, accept: Accept | None, outcome: StepOutcome
) -> int:
    """Add the groups that pass ``accept`` to the step; returns the budget left."""
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
    return remaining


def _best_candidates(
    allocator: RolloutAllocator, candidates: list[Group[H]], trained: list[Group[H]], remaining: int
) -> list[Group[H]]:
    """The candidates the allocator's fallback would choose for ``remaining`` rollouts now:
    the budget only shrinks, so the others are never needed. Prompts trained this step and
    groups whose outcomes come later (no rewards) are no candidates."""
    if remaining <= 0 or not candidates:
        return []
    done = {g.prompt_id for g in trained}
    candidates = [g for g in candidates if g.rewards is not None and g.prompt_id not in done]
    if not candidates:
        return []
    sizes = allocator.fallback(
        np.array([g.prompt_id for g in candidates], dtype=np.uint64), [g.rewards for g in candidates], remaining
    )
    return [g for g, size in zip(candidates, sizes) if size > 0]


def _fallback(
    allocator: RolloutAllocator,
    candidates: list[Group[H]],
    remaining: int,
    draw: Draw,
    accept: Accept | None,
    outcome: StepOutcome,
) -> int:
    """Train the allocator's fallback choice among ``candidates``, topped up by one draw."""
    ids = np.array([g.prompt_id for g in candidates], dtype=np.uint64)
    sizes = allocator.fallback(ids, [g.rewards for g in candidates], remaining)
    chosen = np.flatnonzero(sizes > 0)
    if not chosen.size:
        return remaining
    picked = [candidates[i] for i in chosen]
    added = np.array([sizes[i] - len(candidates[i].samples) for i in chosen], dtype=np.int64)
    results = draw([g.handle for g in picked], added) if added.any() else [([], np.zeros(0)) for _ in picked]
    groups = []
    for group, count, (new_samples, new_rewards) in zip(picked, added, results):
        if len(new_samples) != count:
            raise AllocatorError(f"draw returned {len(new_samples)} samples for a count of {count}")
        new_rewards = np.zeros(0) if new_rewards is None else np.asarray(new_rewards, dtype=np.float64)
        rewards = np.concatenate([group.rewards, new_rewards]) if count else group.rewards
        groups.append(Group(group.prompt_id, group.handle, list(group.samples) + list(new_samples), rewards))
    outcome.rollouts_drawn += int(added.sum())
    allocator.finish_fallback(ids[chosen], [g.rewards for g in groups], added)
    outcome.fallback_groups = len(groups)
    return _train(allocator, groups, remaining, accept, outcome)


def _warn(allocator: RolloutAllocator, budget: int, filled: int, remaining: int, outcome: StepOutcome) -> None:
    """One warning for a step that needed the fallback, or that took prompts and trains
    nothing. ``filled``: rollouts trained before the fallback."""
    trained = int(budget) - remaining
    if not outcome.fallback_groups and not outcome.capped and (trained or not outcome.prompts_consumed):
        return  # a full step, a short last batch, or no data left at all (the epoch's end)
    if outcome.capped:
        why = f"too few prompts qualified within {outcome.cycles} cycles of prompts (the cycle cap)"
    elif outcome.exhausted:
        why = f"the data ran out after {outcome.prompts_consumed} prompts"
    else:
        why = f"it asked for no more prompts for the {int(budget) - filled} rollouts left"
    message = f"{allocator.name} filled {filled} of the {budget} rollouts of this step: {why}. "
    if outcome.fallback_groups:
        message += (
            f"Fallback: {outcome.fallback_groups} groups it had drawn but skipped go into the step instead "
            "(allocator/fallback_groups)."
        )
    else:
        message += "No skipped group was left to fall back on."
    if outcome.groups_filtered:
        message += f" Dynamic filtering dropped {outcome.groups_filtered} groups."
    if remaining:
        message += f" The step trains {trained} of {budget} rollouts."
    hint = getattr(allocator, "fallback_hint", None)
    if hint:
        message += f" {hint}"
    outcome.warning = message
    logger.warning(message)


def _run_cycle(
    allocator: RolloutAllocator,
    prompt_ids: np.ndarray,
    handles: Sequence[H],
    budget: int,
    draw: Draw,
) -> tuple[list[Group[H]], list[Group[H]], int]:
    """One plan/extend/finish cycle: (groups kept, groups not kept, rollouts drawn)."""
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
    groups = [Group(int(prompt_ids[i]), handles[i], samples[i], rewards[i]) for i in range(len(handles))]
    return [g for g, k in zip(groups, keep) if k], [g for g, k in zip(groups, keep) if not k], drawn
