"""The bench's baselines: what each does, that every rollout it draws is counted, and that
they are simulator-only entries (not trainer allocators)."""

import numpy as np
import pytest

from openrlhf_cero.allocators.registry import available_allocators, registered_allocators
from openrlhf_cero.allocators.step_loop import run_step
from openrlhf_cero.sim.baselines import BASELINE_NAMES, BASELINES
from openrlhf_cero.sim.runner import run_allocator
from openrlhf_cero.sim.scenario import make_scenario

SMALL = {"dataset_size": 128, "eval_size": 32, "batch_size": 16, "epochs": 4, "clusters": 4}
SETTINGS = dict(n_samples_per_prompt=8, min_samples=2, max_samples=32, seed=0)


def make(name: str, **options):
    return BASELINES[name](**SETTINGS, **options)


class Pool:
    """Prompts 0..size-1 with fixed pass rates; counts every rollout drawn."""

    def __init__(self, pass_rates):
        self.p = np.asarray(pass_rates, dtype=float)
        self.next = 0
        self.drawn = 0
        self.rng = np.random.default_rng(0)

    def take(self, k):
        idx = [(self.next + i) % self.p.size for i in range(k)]
        self.next += k
        return np.array(idx, dtype=np.uint64) + 1000, idx

    def draw(self, handles, counts):
        self.drawn += int(np.sum(counts))
        return [([None] * int(c), (self.rng.random(int(c)) < self.p[h]).astype(float)) for h, c in zip(handles, counts)]


def test_baselines_are_not_trainer_allocators():
    assert set(BASELINES).isdisjoint(registered_allocators())
    assert BASELINE_NAMES[0] == "uniform" and "uniform" in available_allocators()


def test_dynamic_filtering_drops_all_equal_groups_refills_and_counts_every_rollout():
    pool = Pool([0.0, 1.0, 0.5, 0.5] * 64)
    alloc = make("dynamic_filtering")
    outcome = run_step(alloc, 16 * 8, pool.take, pool.draw, accept=alloc.accept_group)
    sizes = [len(g.samples) for g in outcome.groups]
    assert sizes == [8] * 16  # the step is full, n per prompt
    assert all(0 < g.rewards.mean() < 1 for g in outcome.groups)  # only mixed groups train
    assert outcome.groups_filtered >= 16  # the p = 0 and p = 1 prompts were dropped and replaced
    assert outcome.rollouts_drawn == pool.drawn == 8 * outcome.prompts_consumed


def test_dynamic_filtering_in_the_simulator_counts_filtered_rollouts():
    scenario = make_scenario("quick", SMALL)
    record = run_allocator(scenario, "dynamic_filtering", seed=0)
    assert record.cum_rollouts[-1] == record.extra["world_rollouts_drawn"]
    assert record.rollouts_mixed.sum() == record.rollouts_trained.sum()  # only mixed groups trained
    assert record.cum_rollouts[-1] > record.rollouts_trained.sum()  # the dropped groups cost rollouts


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0, 4.0])
def test_oversample_even_splits_the_budget_over_k_times_the_prompts(k):
    alloc = make("oversample_even", prompt_oversample=k)
    budget = 64 * 8
    wanted = alloc.prompts_wanted(budget)
    assert wanted == int(64 * k)
    counts = alloc.plan(np.arange(wanted, dtype=np.uint64), budget)
    assert counts.sum() == budget and counts.max() - counts.min() <= 1 and counts.min() >= 2


def test_oversample_even_refuses_k_beyond_n_over_min_samples():
    with pytest.raises(ValueError, match="prompt_oversample"):
        make("oversample_even", prompt_oversample=5.0)


def test_beta_greedy_posterior_forgets_and_favours_prompts_it_believes_mixed():
    alloc = make("beta_greedy", forgetting=0.5)
    ids = np.arange(8, dtype=np.uint64)
    counts = alloc.plan(ids, 32)
    rewards = [np.array([1.0, 0.0] * (c // 2)) if i < 4 else np.zeros(c) for i, c in enumerate(counts)]
    alloc.finish(ids, rewards)
    a, b = alloc.posterior[int(ids[np.flatnonzero(counts)[0]])]
    assert a > 1 and b > 1
    # a second visit: evidence decays by the forgetting factor before the new one is added
    pid = int(ids[np.flatnonzero(counts)[0]])
    before = alloc.posterior[pid]
    alloc.plan(ids[:1] * 0 + pid, 2)
    alloc.finish(ids[:1] * 0 + pid, [np.array([1.0, 1.0])])
    assert alloc.posterior[pid] == pytest.approx((1 + 0.5 * (before[0] - 1) + 2, 1 + 0.5 * (before[1] - 1)))
    # prompts believed all-wrong get no rollouts while mixed ones are offered
    fresh = make("beta_greedy")
    fresh.posterior = {0: (1.0, 40.0), 1: (1.0, 40.0), 2: (5.0, 5.0), 3: (5.0, 5.0)}
    counts = fresh.plan(np.arange(4, dtype=np.uint64), 16)
    assert counts[:2].sum() == 0 and counts[2:].sum() == 16
    assert fresh.prompts_wanted(64 * 8) == 128


def test_beta_greedy_state_round_trips():
    alloc = make("beta_greedy")
    ids = np.arange(6, dtype=np.uint64)
    counts = alloc.plan(ids, 24)
    alloc.finish(ids, [np.ones(c) for c in counts])
    clone = make("beta_greedy")
    clone.load_state_dict(alloc.state_dict())
    assert clone.posterior == alloc.posterior


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_runs_in_the_simulator(name):
    scenario = make_scenario("quick", SMALL)
    record = run_allocator(scenario, name, seed=1)
    assert record.cum_rollouts[-1] >= scenario.total_rollouts
    assert record.cum_rollouts[-1] == record.extra["world_rollouts_drawn"]
    assert (record.rollouts_trained[1:] <= scenario.step_budget).all()
