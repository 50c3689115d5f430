"""CERO's global budget mode as a trainer runs it (issue 13): the trainer tells the allocator
the run's shape (``fit_to_run``), each step spends a whole multiple of the train batch
between its floor and ``step_ceiling`` x the step budget, the run never spends more than its
budget, and a resumed allocator makes the same decisions as one that was never stopped."""

from __future__ import annotations

import numpy as np
import pytest

from openrlhf_cero.allocators import AllocatorError, create_allocator
from openrlhf_cero.allocators.step_loop import run_step

N, BATCH, TRAIN_BATCH = 8, 16, 32
STEP_BUDGET = BATCH * N


def global_cero(**kw):
    kw = {"n_samples_per_prompt": N, "seed": 3, "budget_mode": "global", **kw}
    return create_allocator("cero", **kw)


class Run:
    """A run of ``steps`` steps over a pool of prompts with fixed pass rates, through the
    shared step loop with the bound the trainer passes (generator._allocate_step)."""

    def __init__(self, steps: int, seed: int = 0, pool: int = 200) -> None:
        self.steps = steps
        rng = np.random.default_rng(seed)
        self.pass_rate = rng.beta(0.35, 0.68, pool)
        self.order = np.concatenate([rng.permutation(pool) for _ in range(steps * BATCH // pool + 2)])
        self.position = 0
        self.rng = np.random.default_rng(seed + 1)

    def take(self, k: int):
        chosen = self.order[self.position : self.position + k]
        self.position += chosen.size
        return chosen.astype(np.uint64), chosen.tolist()

    def draw(self, handles, counts):
        return [([None] * c, (self.rng.random(c) < self.pass_rate[h]).astype(float)) for h, c in zip(handles, counts)]

    def step(self, alloc) -> int:
        outcome = run_step(alloc, alloc.step_total_bound(STEP_BUDGET), self.take, self.draw)
        assert outcome.cycles == 1 and outcome.prompts_consumed == BATCH and not outcome.fallback_groups
        return outcome.rollouts_trained


def test_the_trainer_sets_an_unset_run_budget_to_what_uniform_spends():
    alloc = global_cero()
    assert alloc.variable_step_total and alloc.run_rollout_budget is None  # nothing to pace yet
    assert alloc.step_total_bound(STEP_BUDGET) == STEP_BUDGET  # unshaped (direct use): the budget is the ceiling
    alloc.fit_to_run(steps=30, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    assert (alloc.global_steps, alloc.global_budget, alloc.run_rollout_budget) == (30, 30 * STEP_BUDGET, 30 * STEP_BUDGET)
    assert alloc.step_total_bound(STEP_BUDGET) == 2 * STEP_BUDGET
    given = global_cero(global_budget=1000, global_steps=12)
    given.fit_to_run(steps=30, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    assert (given.global_steps, given.global_budget) == (12, 992)  # the user's, in whole train batches
    step_mode = create_allocator("cero", n_samples_per_prompt=N)
    step_mode.fit_to_run(steps=30, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    assert not step_mode.variable_step_total and step_mode.run_rollout_budget is None
    assert step_mode.step_total_bound(STEP_BUDGET) == STEP_BUDGET


@pytest.mark.parametrize("share", [1.0, 0.7])
def test_steps_vary_in_whole_train_batches_and_the_run_never_exceeds_its_budget(share):
    steps = 40
    alloc = global_cero(global_budget=int(share * steps * STEP_BUDGET))
    alloc.fit_to_run(steps=steps, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    run = Run(steps)
    totals = np.array([run.step(alloc) for _ in range(steps)])
    assert (totals % TRAIN_BATCH == 0).all()
    assert totals.min() >= 0.5 * STEP_BUDGET and totals.max() <= 2 * STEP_BUDGET
    assert totals.sum() <= alloc.global_budget
    assert totals.sum() >= alloc.global_budget - TRAIN_BATCH  # and spends it
    assert len(set(totals.tolist())) > 1  # the pace follows the batches' value, not a constant
    assert alloc.metrics()["global_budget_left"] == alloc.global_budget - totals.sum()


def test_a_short_last_batch_trains_what_it_has_and_never_stops_the_run():
    alloc = global_cero()
    alloc.fit_to_run(steps=3, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    ids = np.arange(3, dtype=np.uint64)  # 3 prompts left in the data: room for no whole train batch
    bound = alloc.step_total_bound(STEP_BUDGET)
    assert alloc.prompts_wanted(bound) == BATCH
    counts = alloc.plan(ids, bound * ids.size // BATCH)  # run_step scales the bound to the prompts it got
    assert 3 * 2 <= counts.sum() <= 3 * N * 2


def test_global_mode_without_a_run_shape_names_the_flags_at_the_first_step():
    alloc = global_cero()
    with pytest.raises(AllocatorError, match="--allocator.cero.global_budget .*global_steps"):
        alloc.plan(np.arange(BATCH, dtype=np.uint64), STEP_BUDGET)


def test_resumed_allocator_makes_the_same_decisions_as_the_uninterrupted_one():
    steps, stop = 24, 9
    uninterrupted = global_cero()
    uninterrupted.fit_to_run(steps=steps, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    run = Run(steps, seed=4)
    totals = [run.step(uninterrupted) for _ in range(steps)]

    first = global_cero()
    first.fit_to_run(steps=steps, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    replay = Run(steps, seed=4)
    for _ in range(stop):
        replay.step(first)
    saved = first.state_dict()
    resumed = global_cero()  # a new process: built from the flags, shaped by the trainer, then loaded
    resumed.fit_to_run(steps=steps, step_budget=STEP_BUDGET, step_multiple=TRAIN_BATCH)
    resumed.load_state_dict(saved)
    assert resumed.settings_changes(saved) == {}
    assert [replay.step(resumed) for _ in range(steps - stop)] == totals[stop:]
    assert resumed.state_dict()["state"] == uninterrupted.state_dict()["state"]
