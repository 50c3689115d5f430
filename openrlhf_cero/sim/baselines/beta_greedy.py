"""``beta_greedy``: a Beta posterior per prompt with forgetting, greedy on expected rollouts
in mixed-reward groups.

Each prompt has Beta(alpha, beta) over its pass rate, from the uniform prior; after a
visit with s successes and f failures, alpha <- 1 + gamma (alpha - 1) + s and likewise
beta (``forgetting`` gamma: older visits count less, as the policy moves). A step takes
``prompt_oversample`` x ``rollout.batch_size`` prompts; a group of m rollouts of a prompt
is worth m P(mixed | m) = m (1 - E[p^m] - E[(1-p)^m]) under its posterior (the rollouts
expected to land in a group with both outcomes), for m in {0} u [min_samples, cap], cap =
``group_cap`` x n; the budget goes, steepest value per rollout first, to the best of
them (:func:`openrlhf_cero.sim.allocate.best_counts`). Prompts it believes mixed get large
groups, the others none.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import betaln

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator
from openrlhf_cero.sim.allocate import best_counts


class BetaGreedyBaseline(RolloutAllocator):
    name = "beta_greedy"
    options = (
        OptionSpec("prompt_oversample", float, 2.0, "prompts per step as a multiple of rollout.batch_size"),
        OptionSpec("forgetting", float, 0.8, "weight of a prompt's earlier evidence at each new visit"),
        OptionSpec("group_cap", float, 2.0, "largest group, as a multiple of n (at most max_samples)"),
    )

    def __init__(self, *, prompt_oversample: float = 2.0, forgetting: float = 0.8, group_cap: float = 2.0, **settings) -> None:
        super().__init__(**settings)
        if not (prompt_oversample >= 1.0 and 0.0 <= forgetting <= 1.0 and group_cap * self.n_samples_per_prompt >= self.min_samples):
            raise AllocatorError(f"beta_greedy: bad options {prompt_oversample=}, {forgetting=}, {group_cap=}")
        self.prompt_oversample, self.forgetting = float(prompt_oversample), float(forgetting)
        self.cap = int(min(self.max_samples, round(group_cap * self.n_samples_per_prompt)))
        self.posterior: dict[int, tuple[float, float]] = {}

    def prompts_wanted(self, budget: int) -> int:
        return math.ceil(int(budget) * self.prompt_oversample / self.n_samples_per_prompt)

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        ab = np.array([self.posterior.get(int(i), (1.0, 1.0)) for i in prompt_ids])
        a, b, m = ab[:, :1], ab[:, 1:], np.arange(self.cap + 1)[None, :]
        mixed = 1.0 - np.exp(betaln(a + m, b) - betaln(a, b)) - np.exp(betaln(a, b + m) - betaln(a, b))
        return best_counts(m * mixed, budget, self.min_samples, self.cap)

    def _finish(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        g = self.forgetting
        for pid, s in zip(prompt_ids.tolist(), scores):
            if s.size:
                a, b = self.posterior.get(pid, (1.0, 1.0))
                self.posterior[pid] = (1.0 + g * (a - 1.0) + float(s.sum()), 1.0 + g * (b - 1.0) + float(s.size - s.sum()))
        return np.array([s.size > 0 for s in scores], dtype=bool)

    def _state(self) -> dict[str, Any]:
        return {"posterior": {str(k): list(v) for k, v in self.posterior.items()}}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.posterior = {int(k): (float(v[0]), float(v[1])) for k, v in state.get("posterior", {}).items()}
