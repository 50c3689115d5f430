"""Pilot-Commit decisions through the allocator API, one cycle at a time, on constructed
pilot outcomes (n = 12, n_pilot = 8, so pilot means are k/8 and the commit adds 4)."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.allocators.pilot_commit import (
    IN_BAND,
    TOO_EASY,
    TOO_HARD,
    PilotCommitAllocator,
    classify_pilots,
)
from openrlhf_cero.allocators.registry import allocator_class, available_allocators, create_allocator

N, N_PILOT, COMMIT = 12, 8, 4


def make(**options) -> PilotCommitAllocator:
    options.setdefault("n_pilot", N_PILOT)
    options.setdefault("adaptive_pool", False)
    return create_allocator("pilot_commit", n_samples_per_prompt=N, max_samples=N, **options)


def pilot(successes: int, n_pilot: int = N_PILOT) -> np.ndarray:
    return np.array([1.0] * successes + [0.0] * (n_pilot - successes))


def run_cycle(alloc, ids, successes, budget):
    """One plan/extend/finish cycle with pilot outcomes ``successes`` (k per prompt);
    returns (pilot counts, commit counts, keep)."""
    ids = np.asarray(ids, dtype=np.uint64)
    planned = alloc.plan(ids, budget)
    rewards = [pilot(k) if c else np.zeros(0) for k, c in zip(successes, planned)]
    commit = alloc.extend(ids, rewards) if planned.any() else np.zeros(ids.size, dtype=np.int64)
    rewards = [np.concatenate([r, np.tile([1.0, 0.0], c // 2 + 1)[:c]]) for r, c in zip(rewards, commit)]
    if commit.any():
        assert not alloc.extend(ids, rewards).any()  # the commit round is the last
    keep = alloc.finish(ids, rewards)
    return planned, commit, keep


# ── options ──


def test_registered_under_its_name_with_options_matching_the_constructor():
    assert "pilot_commit" in available_allocators()
    assert allocator_class("pilot_commit") is PilotCommitAllocator
    signature = inspect.signature(PilotCommitAllocator.__init__).parameters
    names = {spec.name for spec in PilotCommitAllocator.options}
    assert {"n_pilot", "band_low", "band_high", "pool_factor", "eviction_threshold", "max_rounds"} <= names
    for spec in PilotCommitAllocator.options:
        assert signature[spec.name].default == spec.default, spec.name
        assert isinstance(spec.default, spec.type), spec.name


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64, 128])
def test_default_pilot_is_a_quarter_of_the_group_but_at_least_four(n):
    alloc = create_allocator("pilot_commit", n_samples_per_prompt=n)
    assert alloc.n_pilot == min(n, max(4, n // 4))
    assert alloc.max_cycles == alloc.max_rounds


@pytest.mark.parametrize(
    "options, flag",
    [
        ({"n_pilot": 13}, "n_pilot"),
        ({"n_pilot": -1}, "n_pilot"),
        ({"band_low": 0.8, "band_high": 0.5}, "band_low"),
        ({"band_high": 1.2}, "band_high"),
        ({"eviction_threshold": -1}, "eviction_threshold"),
        ({"pool_factor": 0.5}, "pool_factor"),
        ({"pool_factor": float("inf")}, "pool_factor"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"defer_delay": 0}, "defer_delay"),
        ({"max_defers": -1}, "max_defers"),
        ({"n_pilot": 2, "band_low": 0.6, "band_high": 0.75}, "n_pilot"),  # k/2 never in [0.6, 0.75]
    ],
)
def test_bad_options_name_the_flag(options, flag):
    with pytest.raises(AllocatorError, match=rf"--allocator\.pilot_commit\.{flag}"):
        make(**options)


# ── the band ──


def test_band_is_closed_and_float_noise_is_tolerated():
    means = np.array([0.0, 0.125, 0.5, 0.75, 0.875, 1.0, 0.1 + 0.2 + 0.45, 0.1 + 0.025])
    verdicts = classify_pilots(means, 0.125, 0.75)
    assert verdicts.tolist() == [TOO_HARD, IN_BAND, IN_BAND, IN_BAND, TOO_EASY, TOO_EASY, IN_BAND, IN_BAND]


def test_commit_exactly_the_prompts_whose_pilot_mean_lies_in_the_band():
    alloc = make(eviction_threshold=N_PILOT)  # one all-correct pilot evicts
    successes = list(range(N_PILOT + 1))  # pilot means 0, 1/8, ..., 1
    ids = np.arange(100, 100 + len(successes))
    planned, commit, keep = run_cycle(alloc, ids, successes, budget=N * len(ids))
    assert (planned == N_PILOT).all()
    in_band = np.array([0.125 <= k / N_PILOT <= 0.75 for k in successes])
    assert commit.tolist() == np.where(in_band, COMMIT, 0).tolist()
    assert keep.tolist() == in_band.tolist()
    m = alloc.metrics()
    assert m["pilot_pass"] == in_band.sum() == m["prompts_trained"]
    assert m["pilot_too_hard"] == 1 and m["pilot_too_easy"] == 1 and m["pilot_newly_evicted"] == 1
    assert m["pilot_rollouts_skipped"] == N_PILOT * (~in_band).sum()
    assert m["rollouts_drawn"] == N_PILOT * len(ids) + COMMIT * in_band.sum()
    assert m["samples_per_prompt_min"] == m["samples_per_prompt_max"] == N
    assert m["zero_variance_share"] == 0.0  # a pilot in the band already holds a success and a failure


def test_commits_no_more_groups_than_the_budget_holds_and_queues_the_surplus():
    alloc = make()
    ids = np.arange(1, 6)
    _, commit, keep = run_cycle(alloc, ids, [4] * 5, budget=2 * N + N - 1)  # room for 2 groups
    assert commit.tolist() == [COMMIT, COMMIT, 0, 0, 0]  # pool order
    assert keep.sum() * N <= 3 * N - 1
    assert alloc.metrics()["pilot_surplus"] == 3
    assert alloc.requeue(6).tolist() == [3, 4, 5]  # due the next cycle, oldest first


def test_no_pilot_when_the_budget_holds_no_group():
    alloc = make()
    assert alloc.prompts_wanted(N - 1) == 0
    planned, _, keep = run_cycle(alloc, [1, 2], [4, 4], budget=N - 1)
    assert not planned.any() and not keep.any()


def test_a_prompt_twice_in_one_pool_is_piloted_once():
    alloc = make()
    planned, _, keep = run_cycle(alloc, [7, 8, 7], [4, 4, 4], budget=3 * N)
    assert planned.tolist() == [N_PILOT, N_PILOT, 0]
    assert keep.tolist() == [True, True, False]


def test_pool_is_pool_factor_times_the_groups_needed():
    alloc = make(pool_factor=2.5)
    assert alloc.prompts_wanted(4 * N) == 10
    assert alloc.prompts_wanted(4 * N + 3) == 10


def test_adaptive_pool_grows_with_a_low_in_band_share_and_is_capped():
    alloc = make(adaptive_pool=True, pool_factor=2.0)
    run_cycle(alloc, np.arange(1, 11), [4, 0, 0, 0, 0, 0, 0, 0, 0, 0], budget=10 * N)  # share 1/10
    assert alloc.pool_multiple() == pytest.approx(10.0)
    assert alloc.prompts_wanted(3 * N) == 30
    run_cycle(alloc, np.arange(11, 111), [0] * 100, budget=100 * N)
    assert alloc.pool_multiple() == pytest.approx(16.0)  # 8 x pool_factor
    fixed = make(adaptive_pool=False, pool_factor=2.0)
    run_cycle(fixed, np.arange(1, 11), [0] * 10, budget=10 * N)
    assert fixed.pool_multiple() == 2.0


# ── eviction ──


def test_solved_prompts_are_evicted_and_get_no_rollouts_later():
    alloc = make(eviction_threshold=N_PILOT)
    run_cycle(alloc, [1, 2, 3], [8, 4, 0], budget=3 * N)
    assert alloc.is_evicted(np.array([1, 2, 3], dtype=np.uint64)).tolist() == [True, False, False]
    planned, _, keep = run_cycle(alloc, [3, 1, 2], [4, 4, 4], budget=3 * N)
    assert planned.tolist() == [N_PILOT, 0, N_PILOT]
    assert keep.tolist() == [True, False, True]
    m = alloc.metrics()
    assert m["pilot_skipped_evicted"] == 1 and m["evicted_prompts"] == 1


@pytest.mark.parametrize(
    "threshold, visits, evicted_after",
    [
        (16, [8, 8, 8], 2),  # the default: two all-correct pilots of 8 in a row
        (16, [8, 7, 8, 8], 4),  # a failure restarts the count
        (8, [7, 8], 2),
        (24, [8, 8, 8], 3),
        (9, [8, 8], 2),
        (0, [8, 8, 8, 8, 8], None),  # never
    ],
)
def test_eviction_after_threshold_correct_pilot_rollouts_in_a_row(threshold, visits, evicted_after):
    alloc = make(eviction_threshold=threshold)
    pid = np.array([1], dtype=np.uint64)
    for visit, successes in enumerate(visits, start=1):
        planned, _, keep = run_cycle(alloc, pid, [successes], budget=N)
        assert not keep.any()  # 7/8 and 8/8 lie above the band
        assert planned[0] == (0 if evicted_after is not None and visit > evicted_after else N_PILOT)
        assert alloc.is_evicted(pid)[0] == (evicted_after is not None and visit >= evicted_after)
    assert alloc.metrics()["pilot_newly_evicted"] == (evicted_after is not None)


# ── deferral ──


def test_too_hard_prompts_are_offered_again_after_the_delay_until_max_defers():
    alloc = make(defer_delay=3, max_defers=2)
    run_cycle(alloc, [5], [0], budget=N)  # cycle 0: deferred once, due at cycle 3
    for _ in range(2):
        assert alloc.requeue(4).size == 0
        run_cycle(alloc, [90], [4], budget=N)
    assert alloc.requeue(4).tolist() == [5]
    assert alloc.requeue(4).size == 0  # handed out once
    run_cycle(alloc, [5], [0], budget=N)  # deferred twice: still queued
    for _ in range(2):
        run_cycle(alloc, [91], [4], budget=N)
    assert alloc.requeue(4).tolist() == [5]
    run_cycle(alloc, [5], [0], budget=N)  # a third time: left to the next epoch
    for _ in range(5):
        run_cycle(alloc, [92], [4], budget=N)
        assert alloc.requeue(4).size == 0
    run_cycle(alloc, [5], [0], budget=N)  # back with a new epoch: deferred again, count restarted
    for _ in range(3):
        run_cycle(alloc, [93], [4], budget=N)
    assert alloc.requeue(4).tolist() == [5]


def test_a_deferred_prompt_that_lands_in_the_band_leaves_the_queue():
    alloc = make(defer_delay=1)
    run_cycle(alloc, [5, 6], [0, 0], budget=2 * N)
    assert sorted(alloc.requeue(4).tolist()) == [5, 6]
    _, _, keep = run_cycle(alloc, [5, 6], [3, 0], budget=2 * N)
    assert keep.tolist() == [True, False]
    run_cycle(alloc, [90], [4], budget=N)
    assert alloc.requeue(4).tolist() == [6]


def test_a_queued_prompt_met_fresh_from_the_dataloader_is_not_offered_twice():
    alloc = make(defer_delay=1)
    run_cycle(alloc, [5], [0], budget=N)
    run_cycle(alloc, [5], [4], budget=N)  # came round again by itself, now in band
    assert alloc.requeue(4).size == 0
    assert alloc.metrics()["deferred_waiting"] == 0


def test_requeue_takes_at_most_half_the_pool():
    alloc = make(defer_delay=1)
    run_cycle(alloc, np.arange(1, 11), [0] * 10, budget=10 * N)
    assert alloc.requeue(5).size == math.ceil(5 / 2)
    assert alloc.requeue(1).size == 1
    assert alloc.requeue(0).size == 0


def test_queued_prompts_keep_their_place_when_a_pool_has_no_room():
    alloc = make(defer_delay=1)
    run_cycle(alloc, [5], [0], budget=N)
    again = alloc.requeue(2)
    run_cycle(alloc, again, [4], budget=N - 1)  # no group fits: nothing piloted
    assert alloc.requeue(2).tolist() == [5]


# ── state ──


def test_state_is_json_and_a_reloaded_allocator_decides_the_same():
    rng = np.random.default_rng(3)
    alloc = make(defer_delay=2, adaptive_pool=True)
    for cycle in range(6):
        ids = np.concatenate([alloc.requeue(8), rng.integers(1, 40, size=8).astype(np.uint64)])
        run_cycle(alloc, ids, rng.integers(0, N_PILOT + 1, size=ids.size), budget=3 * N)
    alloc.metrics()
    state = json.loads(json.dumps(alloc.state_dict()))
    twin = make(defer_delay=2, adaptive_pool=True)
    twin.load_state_dict(state)
    assert twin.state_dict() == alloc.state_dict()
    for cycle in range(6):
        assert twin.prompts_wanted(3 * N) == alloc.prompts_wanted(3 * N)
        again = alloc.requeue(8)
        assert twin.requeue(8).tolist() == again.tolist()
        ids = np.concatenate([again, rng.integers(1, 40, size=8).astype(np.uint64)])
        successes = rng.integers(0, N_PILOT + 1, size=ids.size)
        for a, b in zip(run_cycle(alloc, ids, successes, 3 * N), run_cycle(twin, ids, successes, 3 * N)):
            assert a.tolist() == b.tolist()
    assert twin.metrics() == alloc.metrics()
    assert twin.state_dict() == alloc.state_dict()


def test_state_of_another_allocator_is_refused():
    state = create_allocator("uniform", n_samples_per_prompt=N).state_dict()
    with pytest.raises(AllocatorError, match="--rollout_allocator"):
        make().load_state_dict(state)


def test_nan_reward_names_the_prompt():
    alloc = make()
    alloc.plan(np.array([42], dtype=np.uint64), N)
    with pytest.raises(AllocatorError, match="prompt 42"):
        alloc.extend(np.array([42], dtype=np.uint64), [np.full(N_PILOT, np.nan)])


# ── invariants on random cycles ──


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(2, 32),
    pool=st.integers(1, 30),
    groups=st.integers(0, 12),
    seed=st.integers(0, 2**31 - 1),
    n_pilot=st.integers(1, 32),
)
def test_every_cycle_obeys_the_contract(n, pool, groups, seed, n_pilot):
    n_pilot = min(n_pilot, n)
    try:
        alloc = create_allocator("pilot_commit", n_samples_per_prompt=n, n_pilot=n_pilot, band_low=0.0, band_high=0.75)
    except AllocatorError:
        return  # e.g. n_pilot = 1 has no pilot mean inside [0, 0.75] below eviction at 1
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 20, size=pool).astype(np.uint64)
    budget = groups * n + int(rng.integers(0, n))
    planned = alloc.plan(ids, budget)
    assert set(planned.tolist()) <= {0, n_pilot}
    rewards = [rng.random(c) for c in planned]
    commit = alloc.extend(ids, rewards)
    assert set(commit.tolist()) <= {0, n - n_pilot}
    assert (commit[planned == 0] == 0).all()
    rewards = [np.concatenate([r, rng.random(c)]) for r, c in zip(rewards, commit)]
    keep = alloc.finish(ids, rewards)
    sizes = np.array([r.size for r in rewards])
    assert (sizes[keep] == n).all()
    assert sizes[keep].sum() <= budget
    means = np.array([r[:n_pilot].mean() if r.size else np.nan for r in rewards])
    assert (means[keep] <= 0.75 + 1e-9).all()
    in_band = np.nan_to_num(means, nan=2.0) <= 0.75 + 1e-9
    assert keep.sum() == min(in_band.sum(), budget // n)


# ── fallback (used by step_loop.run_step when the budget cannot be committed) ──


def test_fallback_prefers_mixed_pilots_then_the_band_then_prompts_never_piloted():
    alloc = make()
    ids = np.arange(1, 8, dtype=np.uint64)
    rewards = [pilot(0), pilot(8), pilot(7), np.zeros(0), pilot(4), np.full(N_PILOT, 0.5), pilot(8)]
    # mixed: 4/8 (in band), 7/8 (0.125 above); constant: all 0.5 (in band), 0/8 (0.125
    # below), 8/8 twice (0.25 above, in the order offered); never piloted last.
    expected = [4, 2, 5, 0, 1, 6, 3]
    for groups in range(1, 8):
        sizes = alloc.fallback(ids, rewards, groups * N)
        assert np.flatnonzero(sizes).tolist() == sorted(expected[:groups])
        assert set(sizes[sizes > 0].tolist()) == {N}  # whole groups of n: pilot + commit
    assert not alloc.fallback(ids, rewards, N - 1).any()  # no room for a whole group
    state = json.dumps(alloc.state_dict(), sort_keys=True)
    alloc.fallback(ids, rewards, 7 * N)
    assert json.dumps(alloc.state_dict(), sort_keys=True) == state


def test_constant_fractional_rewards_in_the_band_train_as_zero_variance_groups():
    """All rewards 0.5: every pilot mean lies in the band, so prompts commit as usual, but
    the groups have no gradient: zero_variance_share is 1, not 0 (docs/pilot_commit.md §4)."""
    alloc = make()
    ids = np.arange(1, 5, dtype=np.uint64)
    alloc.plan(ids, 2 * N)
    commit = alloc.extend(ids, [np.full(N_PILOT, 0.5)] * 4)
    keep = alloc.finish(ids, [np.full(N_PILOT + c, 0.5) for c in commit])
    assert keep.sum() == 2
    m = alloc.metrics()
    assert m["pilot_pass"] == 2 and m["zero_variance_share"] == 1.0 and m["fallback_groups"] == 0
