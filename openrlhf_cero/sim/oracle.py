"""``oracle``: a simulator-only allocator that sees the latent pass rates.

It is the reference each real allocator is measured against: the best one-shot
allocation of a step's budget, knowing what no real allocator can know. Criterion, per
step (see docs/simulator.md):

- ``group_norm`` signal: maximise sum_i E[S(n_i; p_i)], the expected gradient signal the
  simulator itself rewards (S from :mod:`openrlhf_cero.sim.signal`), subject to
  sum_i n_i = budget and min_samples <= n_i <= max_samples;
- ``rloo`` signal (expected signal does not depend on n there): minimise the gradient
  variance sum_i p_i (1 - p_i) / (n_i - 1), VIP's criterion with the true p.

Both objectives are separable and concave in n_i, so the greedy rule "give the next
rollout to the largest marginal gain" is optimal; it is done in one vectorised top-k
over the table of marginal gains.

It also skips, at no cost, prompts whose group would almost surely be all-correct or
all-wrong (P[zero variance at n] >= ``skip_zero_variance``, default 0.9), and spends n
per kept prompt so the step loop refills the rest of the budget with fresh prompts: the
free version of what filtering allocators (Pilot-Commit) pay pilot rollouts for. Set
``skip_zero_variance`` to 1 for a one-shot oracle that trains every prompt. It is myopic
(one step ahead) and cannot see the future effect of a step on later pass rates.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from openrlhf_cero.allocators.base import RolloutAllocator
from openrlhf_cero.sim.signal import expected_signal

PassRates = Callable[[np.ndarray], np.ndarray]


class OracleAllocator(RolloutAllocator):
    name = "oracle"

    def __init__(
        self, *, pass_rates: PassRates, signal: str = "group_norm", skip_zero_variance: float = 0.9, **settings
    ) -> None:
        super().__init__(**settings)
        self._pass_rates = pass_rates
        self.signal = signal
        self.skip_zero_variance = float(skip_zero_variance)

    def value_gains(self, p: np.ndarray) -> np.ndarray:
        """Marginal value of the (min+j+1)-th rollout of each prompt, j = 0..max-min-1."""
        lo, hi = self.min_samples, self.max_samples
        if self.signal == "rloo":
            n = np.arange(lo, hi, dtype=np.float64)  # going from n to n+1 rollouts
            a = (p * (1.0 - p))[:, None]
            with np.errstate(divide="ignore"):
                gain = np.where(n >= 2, a / (n * (n - 1.0)), np.inf * (a > 0))
            return np.nan_to_num(gain, posinf=1e9)
        value = expected_signal(p, hi, self.signal)
        return np.diff(value[:, lo:], axis=1)

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        self.check_budget(prompt_ids.size, budget)
        p = self._pass_rates(prompt_ids)
        n = self.n_samples_per_prompt
        keep = p**n + (1.0 - p) ** n < self.skip_zero_variance
        if self.skip_zero_variance >= 1.0 or keep.all():
            return self._split(p, budget)
        counts = np.zeros(prompt_ids.size, dtype=np.int64)
        counts[keep] = self._split(p[keep], min(budget, int(keep.sum()) * n))
        return counts

    def _split(self, p: np.ndarray, budget: int) -> np.ndarray:
        size = p.size
        counts = np.full(size, self.min_samples, dtype=np.int64)
        extra = budget - counts.sum()
        if extra <= 0 or self.max_samples == self.min_samples:
            return counts
        gains = self.value_gains(p)
        # Enforce non-increasing gains (exact concavity up to rounding), and among equal gains
        # prefer the smaller group, so zero-value budget is spread evenly rather than piled up.
        gains = np.minimum.accumulate(gains, axis=1) - 1e-12 * np.arange(gains.shape[1])[None, :]
        order = np.argsort(-gains, axis=None, kind="stable")[:extra]
        counts += np.bincount(order // gains.shape[1], minlength=size)
        return counts
