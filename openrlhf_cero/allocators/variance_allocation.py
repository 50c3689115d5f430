"""Variance-minimising rollout allocation (VIP, arXiv 2602.01601, section "allocation").

With n rollouts, prompt q contributes ``a_q * h(n)`` to the variance of the policy
gradient, where ``a_q = p_q (1 - p_q)`` and ``h`` depends on the advantage estimator:

* ``rloo``: ``h(n) = 1 / (n - 1)`` (leave-one-out baseline), convex for n > 1;
* ``grpo`` (group_norm, dr_grpo, reinforce_baseline: baseline = group mean including
  the sample itself): ``h(n) = (n - 1) / n**2``, convex only for n >= 3.

We minimise ``sum_q a_q h(n_q)`` subject to ``sum_q n_q = budget`` and
``lo <= n_q <= hi``. The continuous problem is solved exactly from its KKT conditions
(``-a_q h'(n_q) = lambda`` for interior n_q), the multiplier found by bisection; the
integer allocation starts from the floor of the continuous one and adds the remaining
units greedily by marginal gain, which is exact whenever ``h`` is discretely convex on
[lo, hi] (see docs/vip.md for the argument).

``grpo`` with lo = 2 is not convex on [2, 3]. The continuous solver then works on the
lower convex envelope of h (the tangent from (lo, h(lo)), which for lo = 2 touches h at
n = 4), and the integer result is polished by single-unit exchanges, which repair the one
non-convex step (2 -> 3); docs/vip.md reports how it compares with brute force.
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

VARIANCE_MODELS = ("rloo", "grpo")

# Advantage estimators and the variance model that describes them (docs/vip.md, "h(n)").
ESTIMATOR_MODELS = {
    "rloo": "rloo",
    "group_norm": "grpo",
    "dr_grpo": "grpo",
    "reinforce_baseline": "grpo",
}

_BISECTION_STEPS = 64  # halvings of log(lambda_high / lambda_low) < ~30: below 1e-17 relative


@dataclass(frozen=True)
class VarianceModel:
    """``h(n)`` of one estimator family with everything the solvers need.

    ``lo`` fixes where the convex envelope starts (only ``grpo`` with lo < 3 needs one).
    """

    kind: str
    lo: int

    def __post_init__(self) -> None:
        if self.kind not in VARIANCE_MODELS:
            raise ValueError(f"unknown variance model {self.kind!r}; valid: {', '.join(VARIANCE_MODELS)}")
        if self.lo < 2:
            raise ValueError(f"variance model {self.kind} needs groups of at least 2 samples, got lo={self.lo}")

    # ── h on integers and reals ──

    def h(self, n: np.ndarray | float) -> np.ndarray:
        n = np.asarray(n, dtype=np.float64)
        if self.kind == "rloo":
            return 1.0 / (n - 1.0)
        return (n - 1.0) / (n * n)

    def h_scalar(self, n: int) -> float:
        """h for one integer, in plain Python (the greedy loop's inner step)."""
        if self.kind == "rloo":
            return 1.0 / (n - 1)
        return (n - 1) / (n * n)

    def envelope_end(self) -> float:
        """Where the convex envelope of h on [lo, inf) rejoins h (lo itself if h is convex there)."""
        if self.kind == "rloo" or self.lo >= 3:
            return float(self.lo)
        return _grpo_tangent_point(float(self.lo))

    def h_envelope(self, n: np.ndarray | float) -> np.ndarray:
        """Lower convex envelope of h on [lo, inf): h beyond ``envelope_end``, its tangent line before."""
        n = np.asarray(n, dtype=np.float64)
        t = self.envelope_end()
        if t == self.lo:
            return self.h(n)
        h_lo = float(self.h(self.lo))
        slope = (float(self.h(t)) - h_lo) / (t - self.lo)
        return np.where(n < t, h_lo + slope * (n - self.lo), self.h(np.maximum(n, t)))

    def marginal_envelope(self, n: np.ndarray) -> np.ndarray:
        """``-d h_envelope / dn``: the variance one more (fractional) rollout removes, per unit of a."""
        n = np.asarray(n, dtype=np.float64)
        if self.kind == "rloo":
            return 1.0 / (n - 1.0) ** 2
        t = self.envelope_end()
        flat = (float(self.h(self.lo)) - float(self.h(t))) / (t - self.lo) if t > self.lo else math.inf
        m = np.maximum(n, t)
        return np.where(n < t, flat, (m - 2.0) / m**3)

    def max_marginal(self) -> float:
        """The largest value ``marginal_envelope`` takes on [lo, inf) (its value at lo)."""
        return float(self.marginal_envelope(np.array([float(self.lo)]))[0])

    def inverse_marginal(self, c: np.ndarray) -> np.ndarray:
        """The n >= envelope_end with ``marginal_envelope(n) = c`` (c in (0, max_marginal])."""
        c = np.asarray(c, dtype=np.float64)
        if self.kind == "rloo":
            return 1.0 + 1.0 / np.sqrt(c)
        # (n - 2) / n^3 = c  <=>  n^3 - n/c + 2/c = 0, the largest real root (trigonometric form);
        # three real roots exist for c < 1/27, the largest one is >= 3.
        c = np.minimum(c, 1.0 / 27.0)
        p = -1.0 / c
        q = 2.0 / c
        r = 2.0 * np.sqrt(-p / 3.0)
        arg = np.clip(3.0 * q / (p * r), -1.0, 1.0)
        return r * np.cos(np.arccos(arg) / 3.0)


@functools.lru_cache(maxsize=None)
def _grpo_tangent_point(lo: float) -> float:
    """t > 3 where the tangent of h(n) = (n-1)/n^2 at t passes through (lo, h(lo))."""
    h = lambda n: (n - 1.0) / (n * n)  # noqa: E731
    dh = lambda n: (2.0 - n) / n**3  # noqa: E731
    gap = lambda t: h(t) - h(lo) - dh(t) * (t - lo)  # noqa: E731
    return float(brentq(gap, 3.0, 1e6, xtol=1e-14))


def variance_model_for(estimator: str, lo: int) -> VarianceModel:
    """The documented choice of h for an OpenRLHF advantage estimator."""
    try:
        kind = ESTIMATOR_MODELS[estimator]
    except KeyError:
        raise ValueError(estimator) from None
    return VarianceModel(kind, lo)


def objective(model: VarianceModel, a: np.ndarray, n: np.ndarray, *, envelope: bool = False) -> float:
    """``sum_q a_q h(n_q)``, on the convex envelope of h when ``envelope``."""
    values = model.h_envelope(n) if envelope else model.h(n)
    return float(np.dot(np.asarray(a, dtype=np.float64), values))


def continuous_allocation(model: VarianceModel, a: np.ndarray, budget: float, lo: int, hi: int) -> np.ndarray:
    """Minimiser of ``sum a_q h_envelope(n_q)`` with ``sum n_q = budget``, ``lo <= n_q <= hi``.

    KKT: n_q(lambda) = clip(inverse_marginal(lambda / a_q), lo, hi) for lambda below
    a_q * max_marginal, else lo. sum n_q(lambda) is non-increasing in lambda; bisection on
    log lambda brackets the root, and the leftover of the last bracket is shared among the
    prompts whose n moves inside it (all of them at the same marginal value, so any split
    of it is optimal; for a continuous n(lambda) this is a vanishing interpolation).
    """
    a = np.asarray(a, dtype=np.float64)
    if model.lo != lo:
        raise ValueError(f"variance model built for lo={model.lo}, called with lo={lo}")
    size = a.size
    if size == 0:
        return np.zeros(0)
    if not size * lo <= budget <= size * hi:
        raise ValueError(f"budget {budget} outside [{size * lo}, {size * hi}]")
    if budget == size * lo:
        return np.full(size, float(lo))
    if budget == size * hi:
        return np.full(size, float(hi))
    if np.any(a <= 0):
        raise ValueError("every a_q must be positive")

    top = model.max_marginal()
    lam_low = float(a.min() * model.marginal_envelope(np.array([float(hi)]))[0]) * 0.5  # all at hi
    lam_high = float(a.max() * top) * 2.0  # all at lo

    def counts(lam: float) -> np.ndarray:
        c = lam / a
        n = np.full(size, float(lo))
        inside = c < top
        n[inside] = model.inverse_marginal(c[inside])
        return np.clip(n, lo, hi)

    log_low, log_high = math.log(lam_low), math.log(lam_high)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (log_low + log_high)
        if counts(math.exp(mid)).sum() > budget:
            log_low = mid
        else:
            log_high = mid
    n_many = counts(math.exp(log_low))  # sum >= budget
    n_few = counts(math.exp(log_high))  # sum <= budget
    spread = n_many - n_few
    total_spread = spread.sum()
    if total_spread <= 0:
        return n_few
    share = (budget - n_few.sum()) / total_spread
    return n_few + share * spread


def integer_allocation(
    model: VarianceModel, a: np.ndarray, budget: int, lo: int, hi: int, continuous: np.ndarray | None = None
) -> np.ndarray:
    """Integer minimiser of ``sum a_q h(n_q)`` with ``sum n_q = budget`` and bounds.

    Start at the floor of the continuous optimum, then add the missing units one by one
    where they remove the most variance (a heap of next-unit gains). Ties go to the lower
    index, so equal a_q give the uniform split in order.
    """
    a = np.asarray(a, dtype=np.float64)
    budget = int(budget)
    if continuous is None:
        continuous = continuous_allocation(model, a, budget, lo, hi)
    n = np.clip(np.floor(continuous + 1e-9).astype(np.int64), lo, hi)
    missing = budget - int(n.sum())
    while missing < 0:  # only float noise can put the floors above the budget
        i = int(np.argmax(n - continuous))
        n[i] -= 1
        missing += 1
    if missing:
        gains = a * (model.h(n) - model.h(n + 1))
        heap = [(-g, i) for i, g in enumerate(gains.tolist()) if n[i] < hi]
        heapq.heapify(heap)
        h = model.h_scalar
        weights, sizes = a.tolist(), n.tolist()
        for _ in range(missing):
            _, i = heapq.heappop(heap)
            sizes[i] += 1
            if sizes[i] < hi:
                heapq.heappush(heap, (-weights[i] * (h(sizes[i]) - h(sizes[i] + 1)), i))
        n = np.array(sizes, dtype=np.int64)
    if model.envelope_end() > lo:
        n = _exchange_polish(model, a, n, lo, hi)
    return n


def _exchange_polish(model: VarianceModel, a: np.ndarray, n: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Move single units from the prompt that loses least to the one that gains most while
    that lowers the objective; needed only where h is not convex (grpo at n = 2 -> 3)."""
    n = n.copy()
    for _ in range(4 * n.size + 16):
        gain_add = np.where(n < hi, a * (model.h(n) - model.h(n + 1)), -np.inf)
        loss_remove = np.where(n > lo, a * (model.h(n - 1) - model.h(n)), np.inf)
        j = int(np.argmax(gain_add))
        loss_remove[j] = np.inf
        i = int(np.argmin(loss_remove))
        if i == j or not gain_add[j] - loss_remove[i] > 1e-15 * max(1.0, abs(gain_add[j])):
            break
        n[j] += 1
        n[i] -= 1
    return n
