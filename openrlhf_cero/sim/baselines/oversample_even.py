"""``oversample_even``: k x the prompts of a step, the budget split evenly over them.

No posterior and no filter: it takes ``prompt_oversample`` x ``rollout.batch_size``
prompts and gives each budget / prompts rollouts (the remainder one more to the first
ones). It isolates what spreading one step's samples over more, smaller groups does,
which is part of what CERO's ``prompt_oversample`` does.
"""

from __future__ import annotations

import math

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator


class OversampleEvenBaseline(RolloutAllocator):
    name = "oversample_even"
    options = (
        OptionSpec("prompt_oversample", float, 3.0, "k: prompts per step as a multiple of rollout.batch_size"),
    )

    def __init__(self, *, prompt_oversample: float = 3.0, **settings) -> None:
        super().__init__(**settings)
        k = float(prompt_oversample)
        most = self.n_samples_per_prompt / self.min_samples
        if not 1.0 <= k <= most:
            raise AllocatorError(
                f"oversample_even prompt_oversample={prompt_oversample!r} must lie in [1, n / min_samples = {most:g}]"
            )
        self.prompt_oversample = k

    def prompts_wanted(self, budget: int) -> int:
        return math.ceil(int(budget) * self.prompt_oversample / self.n_samples_per_prompt)

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        size = min(prompt_ids.size, budget // self.min_samples)
        counts = np.zeros(prompt_ids.size, dtype=np.int64)
        if size:
            counts[:size] = self.uniform_counts(size, budget)
        return counts
