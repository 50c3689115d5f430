"""CERO: posteriors against scipy, exact budgets, behaviour, state round trip, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from openrlhf_cero.allocators import AllocatorError, create_allocator
from openrlhf_cero.allocators.step_loop import run_step


def cero(**kw):
    kw.setdefault("n_samples_per_prompt", 8)
    return create_allocator("cero", **kw)


def rewards_for(counts, p, rng):
    return [(rng.random(c) < q).astype(np.float64) for c, q in zip(counts, p)]


def seed_posteriors(alloc, ids, alpha, beta, cumulative=None):
    """Give tracked prompts chosen posteriors through the real finish path is slow to
    steer; writing the table is what a resumed run would hold."""
    rows = alloc.table.lookup_or_insert(np.asarray(ids, dtype=np.uint64))
    cols = alloc.table.columns
    cols["alpha"][rows] = alpha
    cols["beta"][rows] = beta
    x = np.zeros(len(rows)) if cumulative is None else cumulative
    cols["cumulative"][rows] = x
    from openrlhf_cero.allocators.cero_utility import beta_value, log_marginal

    cols["log_dual"][rows] = log_marginal(
        alloc.utility, np.log(beta_value(cols["alpha"][rows], cols["beta"][rows])), x, alloc.saturation_scale
    )


# ── posterior ──


def test_posterior_and_value_match_scipy_beta():
    rng = np.random.default_rng(1)
    alloc = cero(prior_alpha=0.7, prior_beta=1.3)
    ids = np.arange(40, dtype=np.uint64)
    successes = np.zeros(40)
    drawn = np.zeros(40)
    visits = np.zeros(40)
    for _ in range(5):
        counts = alloc.plan(ids, 40 * 8)
        rewards = rewards_for(counts, rng.uniform(0, 1, 40), rng)
        # Fractional rewards update posteriors fractionally.
        rewards[0] = rng.uniform(0, 1, counts[0])
        alloc.finish(ids, rewards)
        successes += [r.sum() for r in rewards]
        drawn += counts
        visits += counts > 0  # a skipped visit (0 rollouts) observes nothing
    post = alloc.posterior(ids)
    a, b = 0.7 + successes, 1.3 + drawn - successes
    np.testing.assert_allclose(post["alpha"], a, rtol=1e-6)
    np.testing.assert_allclose(post["beta"], b, rtol=1e-6)
    mean, var = stats.beta.mean(a, b), stats.beta.var(a, b)
    expected_v = mean - (var + mean**2)  # E[p(1-p)] = E[p] - E[p^2]
    np.testing.assert_allclose(post["value"], expected_v, rtol=1e-5)
    np.testing.assert_allclose(post["cumulative"], drawn)
    np.testing.assert_array_equal(post["visits"], visits)


def test_reward_threshold_counts_successes():
    alloc = cero(reward_threshold=0.5)
    ids = np.arange(2, dtype=np.uint64)
    counts = alloc.plan(ids, 16)
    alloc.finish(ids, [np.linspace(-3, 3, counts[0]), np.full(counts[1], 7.0)])
    post = alloc.posterior(ids)
    assert post["alpha"][0] == 1 + (np.linspace(-3, 3, counts[0]) > 0.5).sum()
    assert post["alpha"][1] == 1 + counts[1] and post["beta"][1] == 1


# ── budget ──


@settings(max_examples=2000, deadline=None)
@given(
    size=st.integers(1, 40),
    n=st.integers(2, 16),
    spread=st.tuples(st.integers(0, 6), st.integers(0, 48)),
    position=st.floats(0, 1),
    utility=st.sampled_from(["exp", "hyperbolic"]),
    scale=st.floats(0.5, 200),
    seed=st.integers(0, 2**31),
    skip=st.booleans(),
)
def test_step_mode_spends_budget_exactly_within_bounds(size, n, spread, position, utility, scale, seed, skip):
    rng = np.random.default_rng(seed)
    low, high = max(2, n - spread[0]), n + spread[1]
    budget = int(round(size * low + position * size * (high - low)))
    alloc = cero(n_samples_per_prompt=n, min_samples=low, max_samples=high, utility=utility, saturation_scale=scale,
                 skip=skip)
    ids = rng.integers(0, 2**64 - 1, size, dtype=np.uint64)
    seed_posteriors(alloc, ids, rng.uniform(0.2, 50, size), rng.uniform(0.2, 50, size), rng.integers(0, 500, size))
    counts = alloc.plan(ids, budget)
    assert counts.sum() == budget
    drawn = counts[counts > 0] if skip else counts  # skip: 0 means "not this visit"
    assert drawn.min() >= low and drawn.max() <= high


def test_step_mode_counts_are_the_rounded_water_filling():
    """Each count is within one rollout of the continuous KKT allocation, which scipy's
    constrained optimiser confirms on small instances."""
    from scipy.optimize import minimize

    from openrlhf_cero.allocators.cero_utility import utility

    rng = np.random.default_rng(3)
    for _ in range(10):
        size = 6
        alloc = cero(min_samples=2, max_samples=20, skip=False, utility="exp", saturation_scale=16.0)
        ids = np.arange(size, dtype=np.uint64) + np.uint64(100)
        alpha, beta, x0 = rng.uniform(0.5, 20, size), rng.uniform(0.5, 20, size), rng.integers(0, 40, size)
        seed_posteriors(alloc, ids, alpha, beta, x0)
        counts = alloc.plan(ids, 48)
        v = alloc.posterior(ids)["value"]

        def loss(n):
            return -utility("exp", v, x0 + n, alloc.saturation_scale).sum()

        res = minimize(loss, np.full(size, 8.0), method="SLSQP", bounds=[(2, 20)] * size,
                       constraints=[{"type": "eq", "fun": lambda n: n.sum() - 48}], options={"ftol": 1e-12})
        assert np.abs(counts - res.x).max() <= 1.0 + 1e-3


def test_global_mode_meets_run_budget_and_step_bounds():
    rng = np.random.default_rng(5)
    pool, batch, steps = 400, 32, 60
    budget = int(steps * batch * 8 * 0.8)  # a run that spends 20% less than uniform
    alloc = cero(budget_mode="global", global_budget=budget, global_steps=steps, step_floor=0.25)
    p = rng.beta(0.35, 0.68, pool)
    ids = np.arange(pool, dtype=np.uint64)
    totals = []
    for t in range(steps):
        sel = rng.choice(pool, batch, replace=False)
        counts = alloc.plan(ids[sel], batch * 8)
        totals.append(counts.sum())
        alloc.finish(ids[sel], rewards_for(counts, p[sel], rng))
    totals = np.array(totals)
    assert abs(totals.sum() - budget) <= 0.01 * budget
    assert totals.min() >= 0.25 * batch * 8 and totals.max() <= batch * 8
    assert alloc.metrics()["global_budget_left"] == budget - totals.sum()


def test_global_mode_through_the_shared_step_loop_is_not_refilled():
    rng = np.random.default_rng(6)
    steps, batch = 12, 16
    alloc = cero(budget_mode="global", global_budget=steps * batch * 6, global_steps=steps, step_floor=0.25)
    pool = np.arange(1000, dtype=np.uint64)
    cursor = iter(range(10**6))

    def take(k):
        chosen = pool[[next(cursor) % pool.size for _ in range(k)]]
        return chosen, list(chosen)

    def draw(handles, counts):
        return [([None] * c, (rng.random(c) < 0.3).astype(float)) for c in counts]

    totals = [run_step(alloc, batch * 8, take, draw) for _ in range(steps)]
    assert all(o.cycles == 1 for o in totals)
    assert sum(o.rollouts_trained for o in totals) == steps * batch * 6


# ── behaviour ──


def test_skips_only_prompts_whose_first_group_is_not_worth_the_budget_dual():
    """Against brute force over the skip sets of small batches: the chosen set's utility
    is within one rollout's worth of the best skip set's (continuous water-filling each)."""
    from openrlhf_cero.allocators.cero_utility import utility
    from openrlhf_cero.allocators.waterfill import solve_log_dual

    rng = np.random.default_rng(13)
    for _ in range(40):
        size, budget = 6, 36
        alloc = cero(min_samples=4, max_samples=16, saturation_scale=8.0, utility="exp")
        ids = np.arange(size, dtype=np.uint64)
        alpha = np.where(rng.random(size) < 0.5, 1.0, rng.uniform(1, 20, size))
        beta = np.where(alpha == 1.0, rng.uniform(20, 200, size), rng.uniform(1, 20, size))
        seed_posteriors(alloc, ids, alpha, beta, rng.integers(0, 30, size).astype(float))
        post = alloc.posterior(ids)
        v, x0 = post["value"], post["cumulative"]
        counts = alloc.plan(ids, budget)
        assert counts.sum() == budget and set(counts[counts > 0]) <= set(range(4, 17))

        def best_with(members):
            theta = np.log(v[members]) - x0[members] / 8.0
            t = solve_log_dual(lambda t: 8.0 * np.maximum(theta - t, 0), 4, 16, budget,
                               ((theta - 2).min(), (theta - 0.5).max()))
            n = np.clip(8.0 * (theta - t), 4, 16)
            return (utility("exp", v[members], x0[members] + n, 8.0) - utility("exp", v[members], x0[members], 8.0)).sum()

        subsets = [np.flatnonzero([(m >> i) & 1 for i in range(size)]) for m in range(1, 2**size)]
        best = max(best_with(s) for s in subsets if 4 * s.size <= budget <= 16 * s.size)
        ours = (utility("exp", v, x0 + counts, 8.0) - utility("exp", v, x0, 8.0)).sum()
        one_rollout = v.max() * np.exp(-x0.min() / 8.0)
        assert ours >= best - one_rollout


def test_oversampling_offers_more_prompts_in_step_mode_only():
    assert cero(prompt_oversample=1.5).prompts_wanted(512) == 96
    assert cero(prompt_oversample=1.0).prompts_wanted(512) == 64
    assert cero(prompt_oversample=3.0).prompts_wanted(512) == 192
    assert cero().prompts_wanted(512) == 64  # default 1.0: rollout.batch_size prompts per step
    assert cero(prompt_oversample=1.5, budget_mode="global", global_budget=10, global_steps=1).prompts_wanted(512) == 64


def test_near_certain_prompts_get_no_more_than_uniform():
    rng = np.random.default_rng(7)
    for _ in range(200):
        size = int(rng.integers(4, 64))
        alloc = cero()
        ids = np.arange(size, dtype=np.uint64)
        m = rng.integers(20, 200, size)  # near 0 or 1: posterior mean below 0.05 or above 0.95
        k = rng.binomial(m, rng.uniform(0, 1, size))
        extreme = rng.random(size) < 0.4
        k[extreme & (rng.random(size) < 0.5)] = 0
        k[extreme & (k > 0)] = m[extreme & (k > 0)]
        uncertain = ~extreme
        if not uncertain.any() or not extreme.any():
            continue
        seed_posteriors(alloc, ids, 1 + k, 1 + m - k, np.zeros(size))
        counts = alloc.plan(ids, size * 8)
        assert (counts[extreme] <= 8).all()
        assert counts[extreme].mean() < counts[uncertain].mean()


def test_cross_epoch_saturation_gives_fewer_to_heavily_sampled_prompts():
    for utility in ("exp", "hyperbolic"):
        alloc = cero(utility=utility, max_samples=32)
        ids = np.arange(16, dtype=np.uint64)
        history = np.where(ids % 2 == 0, 64, 8)  # even prompts got many rollouts earlier
        seed_posteriors(alloc, ids, np.full(16, 5.0), np.full(16, 5.0), history)
        counts = alloc.plan(ids, 16 * 8)
        assert counts[::2].max() < counts[1::2].min()


def test_rewards_steer_later_allocations():
    """Through plan/finish only: prompts that came back all correct or all wrong get less."""
    alloc = cero()
    ids = np.arange(12, dtype=np.uint64)
    alloc.plan(ids, 96)
    outcome = [np.ones(8)] * 4 + [np.zeros(8)] * 4 + [np.array([1.0, 0] * 4)] * 4
    alloc.finish(ids, outcome)
    counts = alloc.plan(ids, 96)
    assert counts[:8].max() < counts[8:].min()
    assert counts.sum() == 96


# ── state ──


def test_state_round_trip_gives_identical_decisions():
    rng = np.random.default_rng(11)
    for mode in ("step", "global"):
        kw = dict(budget_mode=mode, global_budget=20 * 24 * 7, global_steps=20) if mode == "global" else {}
        first = cero(**kw, utility="hyperbolic", prompt_dual_step=0.5)
        ids = rng.integers(0, 2**64 - 1, 300, dtype=np.uint64)
        p = rng.uniform(0, 1, 300)
        batches = [rng.choice(300, 24, replace=False) for _ in range(20)]
        outcomes = np.random.default_rng(12)

        def step(alloc, sel, gen):
            counts = alloc.plan(ids[sel], 24 * 8)
            alloc.finish(ids[sel], rewards_for(counts, p[sel], gen))
            return counts

        for sel in batches[:10]:
            step(first, sel, outcomes)
        saved = json.loads(json.dumps(first.state_dict()))
        second = cero(**kw, utility="hyperbolic", prompt_dual_step=0.5)
        second.load_state_dict(saved)
        state_gen = outcomes.bit_generator.state
        a_counts = [step(first, sel, outcomes) for sel in batches[10:]]
        outcomes.bit_generator.state = state_gen
        b_counts = [step(second, sel, outcomes) for sel in batches[10:]]
        for a, b in zip(a_counts, b_counts):
            np.testing.assert_array_equal(a, b)
        assert json.dumps(first.state_dict()) == json.dumps(second.state_dict())


def test_metrics_report_duals_values_and_shares():
    alloc = cero()
    ids = np.arange(10, dtype=np.uint64)
    counts = alloc.plan(ids, 80)
    alloc.finish(ids, [np.ones(c) for c in counts])
    figures = alloc.metrics()
    for name in ("budget_dual_log", "value_mean", "share_at_min", "share_at_max", "share_skipped",
                 "cumulative_allocation_mean"):
        assert name in figures
    assert figures["value_mean"] == pytest.approx(1 / 6)
    assert figures["cumulative_allocation_mean"] == 8
    assert alloc.metrics().get("value_mean") is None  # reset after reading


def test_runs_in_the_shared_step_loop_with_duplicates():
    rng = np.random.default_rng(2)
    alloc = cero(prompt_oversample=1.0)  # exactly the 8 prompts of the pool
    pool = np.array([5, 5, 6, 7, 8, 9, 10, 11], dtype=np.uint64)

    def take(k):
        return pool[:k], list(range(k))

    def draw(handles, counts):
        return [([None] * c, (rng.random(c) < 0.5).astype(float)) for c in counts]

    outcome = run_step(alloc, 64, take, draw)
    assert outcome.rollouts_trained == 64
    post = alloc.posterior(np.array([5], dtype=np.uint64))
    assert post["visits"][0] == 2  # a prompt offered twice is two groups
    assert post["alpha"][0] + post["beta"][0] - 2 == post["cumulative"][0] > 0


# ── errors ──


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"prior_alpha": 0}, "prior_alpha"),
        ({"saturation_scale": -1}, "saturation_scale"),
        ({"utility": "log"}, "utility"),
        ({"prompt_dual_step": 1.5}, "prompt_dual_step"),
        ({"budget_mode": "epoch"}, "budget_mode"),
        ({"budget_mode": "global", "global_budget": -1}, "global_budget"),
        ({"step_ceiling": 0.5}, "step_ceiling"),
        ({"step_floor": 2.0}, "step_floor"),
        ({"prompt_oversample": 0.5}, "prompt_oversample"),
    ],
)
def test_bad_options_name_the_flag(kw, flag):
    with pytest.raises(AllocatorError, match=f"--allocator.cero.{flag}"):
        cero(**kw)


def test_infeasible_step_budget_and_nan_rewards_are_clear_errors():
    alloc = cero(min_samples=2, max_samples=16)
    ids = np.arange(4, dtype=np.uint64)
    with pytest.raises(AllocatorError, match="cannot be spread"):
        alloc.plan(ids, 100)
    counts = alloc.plan(ids, 32)
    bad = [np.ones(c) for c in counts]
    bad[2] = bad[2].copy()
    bad[2][0] = np.nan
    with pytest.raises(AllocatorError, match="NaN for prompt 2"):
        alloc.finish(ids, bad)
    glob = cero(budget_mode="global", global_budget=1000, global_steps=10, step_floor=1.0, min_samples=2)
    with pytest.raises(AllocatorError, match="step_floor"):
        glob.plan(ids, 200)  # floor 200 > 4 prompts x max_samples 32
