"""CERO's regret against the offline optimum with utilities held fixed.

    python benchmarks/cero_regret.py [--ks 16 32 ... 1024] [--seeds 3]

Setting (docs/cero.md, "Regret"): a pool of prompts with fixed values v_i (posteriors
so concentrated that observations cannot move them), visited in random order epoch
after epoch, ``batch`` prompts per step. CERO runs in ``global`` budget mode through
its public plan/finish contract with a run budget of ``K * batch * n`` rollouts and
per-visit bounds [min_samples, max_samples]. The offline optimum knows every prompt's
visit count m_i and water-fills the same budget (continuous, so it upper-bounds every
integer allocation): X_i = clip(k ln(v_i / lambda), m_i min, m_i max).

Prints regret, regret / K and the fitted exponent a of regret ~ K^a.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import brentq

from openrlhf_cero.allocators import create_allocator
from openrlhf_cero.allocators.cero_utility import utility

N_SAMPLES, LOW, HIGH, SCALE, BATCH = 8, 2, 32, 16.0, 32
CONCENTRATION = 1e7  # alpha + beta: v moves by < 1e-5 over a run


def offline_optimum(values: np.ndarray, visits: np.ndarray, budget: float, form: str = "exp") -> float:
    """Water-filling over cumulative allocations (exp utility), continuous."""
    low, high = visits * LOW, visits * HIGH

    def spend(log_lam: float) -> float:
        return float(np.clip(SCALE * (np.log(values) - log_lam), low, high).sum()) - budget

    log_lam = brentq(spend, np.log(values).min() - high.max() / SCALE - 1, np.log(values).max() + 1, xtol=1e-12)
    x = np.clip(SCALE * (np.log(values) - log_lam), low, high)
    return float(utility(form, values, x, SCALE).sum())


def run(steps: int, pool: int, seed: int) -> tuple[float, float]:
    """(offline optimum, online utility) of one run of ``steps`` steps over ``pool`` prompts."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.02, 0.98, pool)
    budget = steps * BATCH * N_SAMPLES
    alloc = create_allocator(
        "cero", n_samples_per_prompt=N_SAMPLES, min_samples=LOW, max_samples=HIGH, seed=seed,
        saturation_scale=SCALE, utility="exp", budget_mode="global", global_budget=budget, global_steps=steps,
        step_floor=LOW / HIGH,
    )
    ids = np.arange(pool, dtype=np.uint64) + np.uint64(1)
    rows = alloc.table.lookup_or_insert(ids)
    alloc.table.columns["alpha"][rows] = means * CONCENTRATION
    alloc.table.columns["beta"][rows] = (1 - means) * CONCENTRATION
    values = alloc.posterior(ids)["value"]
    alloc.table.columns["log_dual"][rows] = np.log(values)
    order = np.concatenate([rng.permutation(pool) for _ in range(-(-steps * BATCH // pool))])
    for t in range(steps):
        batch = order[t * BATCH : (t + 1) * BATCH]
        counts = alloc.plan(ids[batch], BATCH * HIGH)
        # Fractional rewards at the posterior mean keep every value fixed.
        alloc.finish(ids[batch], [np.full(c, means[i]) for i, c in zip(batch, counts)])
    visits = np.bincount(order[: steps * BATCH], minlength=pool)
    spent = alloc.posterior(ids)["cumulative"]
    online = float(utility("exp", values, spent, SCALE).sum())
    if abs(spent.sum() - budget) > 0.01 * budget:
        raise RuntimeError(f"CERO spent {spent.sum():.0f} of a global budget of {budget}")
    return offline_optimum(values, visits, float(budget)), online


def regret_curve(ks: list[int], pool_of, seeds: int) -> np.ndarray:
    return np.array([np.mean([np.subtract(*run(k, pool_of(k), s)) for s in range(seeds)]) for k in ks])


def fitted_exponent(ks: list[int], regret: np.ndarray) -> float:
    """Least-squares slope of log regret on log K, over the K with positive regret."""
    positive = regret > 1e-9
    if positive.sum() < 2:
        return float("-inf")  # regret vanished: the utilities saturated for both
    return float(np.polyfit(np.log(np.asarray(ks)[positive]), np.log(regret[positive]), 1)[0])


SCENARIOS = {
    "fixed pool of 256 prompts (epochs grow with K)": lambda k: 256,
    "pool grows with K (4 epochs)": lambda k: k * BATCH // 4,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for name, pool_of in SCENARIOS.items():
        regret = regret_curve(args.ks, pool_of, args.seeds)
        print(f"{name}:")
        for k, r in zip(args.ks, regret):
            print(f"  K={k:>5}  regret {r:10.4f}  regret/K {r / k:.5f}")
        print(f"  fitted exponent a (regret ~ K^a): {fitted_exponent(args.ks, regret):.3f}")


if __name__ == "__main__":
    main()
