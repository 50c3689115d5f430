"""Allocators for tests only (hidden from ``available_allocators``, never in recipes).

``unequal_test`` gives deliberately unequal, deterministic group sizes and, when asked,
a second round and skipped prompts, so tests can prove that unequal groups, rounds and
skips flow through the whole OpenRLHF trainer. It is not a method anyone should train with.
"""

from __future__ import annotations

import numpy as np

from openrlhf_cero.allocators.base import OptionSpec, RolloutAllocator
from openrlhf_cero.allocators.registry import register_allocator


@register_allocator
class UnequalTestAllocator(RolloutAllocator):
    name = "unequal_test"
    test_only = True
    options = (OptionSpec("extra_round", bool, False, "hold half of each group back for a second round"),)

    def __init__(self, *, extra_round: bool = False, **settings) -> None:
        super().__init__(**settings)
        self.extra_round = bool(extra_round)
        self.rounds_this_cycle = 0

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        """Alternate n+d / n-d between prompt pairs (d as large as the bounds allow), spending
        the budget exactly; with ``extra_round`` half of each group's count is held back for
        a second round."""
        counts = self.uniform_counts(prompt_ids.size, budget)
        d = min(self.max_samples - counts.max(), counts.min() - self.min_samples)
        pairs = prompt_ids.size // 2 * 2
        counts[0:pairs:2] += d
        counts[1:pairs:2] -= d
        self._final = counts
        self.rounds_this_cycle = 1
        return (counts + 1) // 2 if self.extra_round else counts

    def _extend(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        if not self.extra_round or self.rounds_this_cycle > 1:
            return np.zeros(prompt_ids.size, dtype=np.int64)
        self.rounds_this_cycle += 1
        drawn = np.fromiter((s.size for s in scores), dtype=np.int64, count=len(scores))
        return self._final - drawn
