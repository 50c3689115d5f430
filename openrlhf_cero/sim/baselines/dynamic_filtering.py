"""``dynamic_filtering``: OpenRLHF 0.11.2's ``--algo.dynamic_filtering_enable``.

Every prompt gets n rollouts; a group whose mean reward is outside the open range
(``low``, ``high``) = (0, 1) by default, i.e. all-correct or all-wrong, is dropped and
a new prompt is drawn in its place, until the step holds ``rollout.batch_size`` groups
(OpenRLHF's ``_generate_vllm`` replaces each filtered prompt by the next one). The
dropping is the step loop's ``accept`` (as the OpenRLHF generator wires it), so every
rollout drawn, the dropped ones included, is counted.
"""

from __future__ import annotations

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator


class DynamicFilteringBaseline(RolloutAllocator):
    name = "dynamic_filtering"
    options = (
        OptionSpec("low", float, 0.0, "--algo.dynamic_filtering_range low: drop groups whose mean reward is <= low"),
        OptionSpec("high", float, 1.0, "--algo.dynamic_filtering_range high: drop groups whose mean reward is >= high"),
    )

    def __init__(self, *, low: float = 0.0, high: float = 1.0, **settings) -> None:
        super().__init__(**settings)
        if not float(low) < float(high):
            raise AllocatorError(f"dynamic_filtering needs low < high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        return self.uniform_counts(prompt_ids.size, budget)

    def accept_group(self, rewards: np.ndarray) -> bool:
        """OpenRLHF's rule: keep a group when low < mean reward < high."""
        return self.low < float(np.mean(rewards)) < self.high
