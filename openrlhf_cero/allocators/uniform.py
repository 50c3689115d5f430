"""``uniform``: every prompt gets ``n_samples_per_prompt``, OpenRLHF's stock behaviour.

It is the control of every benchmark, and with it training is identical to stock
OpenRLHF. The trainer offers ``budget / n`` prompts, so each gets exactly n; a budget
that is not a multiple of n (possible only when another source changed group sizes)
is spread as evenly as the bounds allow.
"""

from __future__ import annotations

import numpy as np

from openrlhf_cero.allocators.base import RolloutAllocator
from openrlhf_cero.allocators.registry import register_allocator


@register_allocator
class UniformAllocator(RolloutAllocator):
    name = "uniform"
    needs_rewards = False

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        return self.uniform_counts(prompt_ids.size, budget)
