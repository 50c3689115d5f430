"""The allocator contract every allocator obeys, checked on every registered allocator,
plus the shared step loop and the bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_cero.allocators import AllocatorError, available_allocators, create_allocator, prompt_id, prompt_ids
from openrlhf_cero.allocators.step_loop import run_step

ALL = available_allocators() + ["unequal_test"]


class Dataset:
    """Prompts 0..size-1 with latent pass rates; draws Bernoulli rewards deterministically."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.pass_rate = self.rng.beta(0.35, 0.68, size)
        self.position = 0
        self.drawn = 0

    def take(self, k: int):
        handles = list(range(self.position, min(self.position + k, len(self.pass_rate))))
        self.position += len(handles)
        return np.array([prompt_id(f"q{h}", "") for h in handles], dtype=np.uint64), handles

    def draw(self, handles, counts):
        self.drawn += int(np.sum(counts))
        out = []
        for h, c in zip(handles, counts):
            rewards = (self.rng.random(int(c)) < self.pass_rate[h]).astype(float)
            out.append(([(h, j) for j in range(int(c))], rewards))
        return out


def make(name: str, n: int = 4, **kw):
    return create_allocator(name, n_samples_per_prompt=n, seed=0, **kw)


def test_prompt_ids_are_stable_and_distinguish_labels():
    assert prompt_id("What is 2+2?", "4") == prompt_id("What is 2+2?", "4")
    assert prompt_id("What is 2+2?", "4") != prompt_id("What is 2+2?", "5")
    # A fixed value: the same on every machine, process and Python version (no salted hash()).
    assert prompt_id("What is 2+2?", "4") == 0x80406FBD5D9F6073
    ids = prompt_ids(["a", "b"], ["1", None])
    assert ids.dtype == np.uint64 and ids[1] == prompt_id("b", "")


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 40), n=st.integers(2, 16), seed=st.integers(0, 10**6))
def test_step_fills_budget_exactly_within_bounds(name, batch, n, seed):
    """Every allocator trains exactly batch*n rollouts per step, each group in [min, max],
    and every rollout drawn is accounted for."""
    data = Dataset(batch * 20, seed)
    alloc = make(name, n)
    for _ in range(3):
        outcome = run_step(alloc, batch * n, data.take, data.draw)
        if outcome.exhausted:
            break
        sizes = [len(g.samples) for g in outcome.groups]
        assert sum(sizes) == batch * n
        assert all(alloc.min_samples <= s <= alloc.max_samples for s in sizes)
        assert outcome.rollouts_drawn >= sum(sizes)
        figures = alloc.metrics()
        assert figures["rollouts_drawn"] == outcome.rollouts_drawn
        assert figures["rollouts_trained"] == batch * n
    assert alloc.rollouts_drawn_total == data.drawn


@pytest.mark.parametrize("name", ALL)
def test_same_seed_and_observations_give_same_decisions_after_reload(name):
    first, data_a = make(name, 8), Dataset(400, seed=3)
    for _ in range(3):
        run_step(first, 64, data_a.take, data_a.draw)
    state = json.loads(json.dumps(first.state_dict()))  # must be JSON-serialisable
    resumed = make(name, 8)
    resumed.load_state_dict(state)
    data_b = Dataset(400, seed=3)
    data_b.position, data_b.rng = data_a.position, np.random.default_rng(99)
    data_a.rng = np.random.default_rng(99)
    for _ in range(3):
        a = run_step(first, 64, data_a.take, data_a.draw)
        b = run_step(resumed, 64, data_b.take, data_b.draw)
        assert [(g.prompt_id, len(g.samples)) for g in a.groups] == [(g.prompt_id, len(g.samples)) for g in b.groups]


def test_uniform_gives_every_prompt_n():
    alloc = make("uniform", 8)
    data = Dataset(100)
    outcome = run_step(alloc, 16 * 8, data.take, data.draw)
    assert [len(g.samples) for g in outcome.groups] == [8] * 16
    assert outcome.prompts_consumed == 16 and outcome.cycles == 1


def test_dynamic_filtering_refills_with_new_prompts():
    """OpenRLHF's dynamic filtering: groups with all-equal scores are dropped and replaced."""
    alloc = make("uniform", 4)
    data = Dataset(500, seed=1)
    outcome = run_step(alloc, 32, data.take, data.draw, accept=lambda r: 0 < r.mean() < 1)
    assert sum(len(g.samples) for g in outcome.groups) == 32
    assert all(0 < g.rewards.mean() < 1 for g in outcome.groups)
    assert outcome.groups_filtered > 0 and outcome.prompts_consumed == 8 + outcome.groups_filtered


def test_short_last_batch_scales_budget_like_openrlhf():
    alloc = make("uniform", 4)
    data = Dataset(10)
    run_step(alloc, 32, data.take, data.draw)  # 8 prompts
    outcome = run_step(alloc, 32, data.take, data.draw)  # 2 left
    assert outcome.exhausted and [len(g.samples) for g in outcome.groups] == [4, 4]


def test_second_round_and_rewards_checked_against_plan():
    alloc = make("unequal_test", 4, extra_round=True)
    data = Dataset(50)
    outcome = run_step(alloc, 24, data.take, data.draw)
    assert sorted(len(g.samples) for g in outcome.groups) == [2, 2, 2, 6, 6, 6]
    uniform = make("uniform", 4)
    uniform.plan([1, 2], 8)
    with pytest.raises(AllocatorError, match="prompt 1 has 3 rewards but 4 rollouts were planned"):
        uniform.extend([1, 2], [np.ones(3), np.ones(4)])


# ── bad input ──


def test_unknown_allocator_lists_registered_ones():
    with pytest.raises(AllocatorError) as info:
        create_allocator("ceroo", n_samples_per_prompt=4)
    assert "ceroo" in str(info.value) and "uniform" in str(info.value)


def test_min_samples_below_two_refused_for_group_estimators():
    with pytest.raises(AllocatorError, match="--allocator.min_samples=1.*group_norm"):
        create_allocator("uniform", n_samples_per_prompt=4, min_samples=1, advantage_estimator="group_norm")
    assert create_allocator("uniform", n_samples_per_prompt=4, min_samples=1, advantage_estimator="reinforce")


def test_impossible_budget_names_the_flags():
    alloc = make("uniform", 4, max_samples=6)
    with pytest.raises(AllocatorError, match="--allocator.max_samples=6"):
        alloc.plan([1, 2], 20)


def test_nan_reward_names_the_prompt():
    alloc = make("uniform", 2)
    alloc.plan([7, 8], 4)
    with pytest.raises(AllocatorError, match="NaN for prompt 8"):
        alloc.finish([7, 8], [[1.0, 0.0], [np.nan, 1.0]])


def test_rewards_outside_unit_interval_need_threshold():
    alloc = make("unequal_test", 2)
    alloc.plan([7], 2)
    with pytest.raises(AllocatorError, match="--allocator.reward_threshold"):
        alloc.finish([7], [[-1.0, 2.0]])
    alloc = make("unequal_test", 2, reward_threshold=0.5)
    alloc.plan([7], 2)
    assert alloc.finish([7], [[-1.0, 2.0]]).tolist() == [True]


def test_reward_model_without_rewards_only_for_uniform():
    alloc = make("uniform", 2)
    alloc.plan([1], 2)
    assert alloc.finish([1], None).tolist() == [True]
    other = make("unequal_test", 2)
    other.plan([1], 2)
    with pytest.raises(AllocatorError, match="--reward.remote_url"):
        other.finish([1], None)


def test_state_of_another_allocator_is_refused():
    with pytest.raises(AllocatorError, match="--rollout_allocator uniform"):
        make("unequal_test").load_state_dict(make("uniform").state_dict())


# ── zero prompts ──


@pytest.mark.parametrize("name", ALL)
def test_zero_prompts_are_a_valid_no_op_for_every_allocator(name):
    """plan([], budget) gives an empty count array for any budget >= 0, extend / finish on
    zero prompts give empty arrays, and none of them changes the allocator's state."""
    alloc = make(name, 4)
    data = Dataset(100)
    run_step(alloc, 16, data.take, data.draw)
    alloc.metrics()
    before = json.dumps(alloc.state_dict(), sort_keys=True)
    for budget in (0, 1, 16, 10**6):
        counts = alloc.plan([], budget)
        assert counts.dtype == np.int64 and counts.shape == (0,)
        more = alloc.extend(np.zeros(0, dtype=np.uint64), [])
        assert more.dtype == np.int64 and more.shape == (0,)
        keep = alloc.finish([], [])
        assert keep.dtype == bool and keep.shape == (0,)
    assert alloc.finish([], None).shape == (0,)  # nothing to close, even without rewards
    assert alloc.fallback([], [], 16).shape == (0,)
    assert json.dumps(alloc.state_dict(), sort_keys=True) == before
    figures = alloc.metrics()
    assert figures["rollouts_drawn"] == 0 and figures["prompts_trained"] == 0 and figures["prompts_skipped"] == 0
    with pytest.raises(AllocatorError, match="budget must be >= 0"):
        alloc.plan([], -1)
    # A real cycle still runs afterwards.
    assert run_step(alloc, 16, data.take, data.draw).rollouts_trained == 16


def test_zero_prompts_must_still_match_the_open_plan():
    alloc = make("uniform", 4)
    alloc.plan([1, 2], 8)
    with pytest.raises(AllocatorError, match="open plan had 2"):
        alloc.finish([], [])
    alloc.plan([], 8)  # a new plan replaces the open one
    assert alloc.finish([], []).shape == (0,)


# ── constant rewards: every step is filled, never an error ──


class ConstantData:
    """An endless stream over ``size`` prompts (epoch after epoch) whose every reward is ``value``."""

    def __init__(self, value: float, size: int = 300) -> None:
        self.value, self.size, self.position, self.drawn = value, size, 0, 0

    def take(self, k: int):
        handles = [(self.position + i) % self.size for i in range(k)]
        self.position += k
        return np.array([prompt_id(f"c{h}", "") for h in handles], dtype=np.uint64), handles

    def draw(self, handles, counts):
        self.drawn += int(np.sum(counts))
        return [([(h, j) for j in range(int(c))], np.full(int(c), self.value)) for h, c in zip(handles, counts)]


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("name", ALL)
@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 12), n=st.integers(2, 16))
def test_constant_rewards_fill_every_step_and_report_the_fallback(name, value, batch, n):
    """All rewards 1, 0 or 0.5: no prompt is worth a rollout more than another, some
    allocators qualify none; every step still trains exactly batch * n rollouts, nothing
    raises, and ``fallback_groups`` says how many groups the fallback supplied."""
    data = ConstantData(value)
    alloc = make(name, n)
    for _ in range(3):
        outcome = run_step(alloc, batch * n, data.take, data.draw)
        assert not outcome.exhausted
        assert outcome.rollouts_trained == batch * n
        assert all(alloc.min_samples <= len(g.samples) <= alloc.max_samples for g in outcome.groups)
        assert len({g.prompt_id for g in outcome.groups}) == len(outcome.groups)
        figures = alloc.metrics()
        assert figures["rollouts_trained"] == batch * n and figures["rollouts_drawn"] == outcome.rollouts_drawn
        assert figures["fallback_groups"] == outcome.fallback_groups
        assert figures["zero_variance_share"] == 1.0  # constant rewards: no group has a gradient
        if name == "pilot_commit" and value != 0.5:
            assert outcome.fallback_groups == len(outcome.groups) == batch and outcome.warning
        else:  # the others keep what they draw; 0.5 lies in Pilot-Commit's band, committed as usual
            assert outcome.fallback_groups == 0 and outcome.warning is None
    assert alloc.rollouts_drawn_total == data.drawn
