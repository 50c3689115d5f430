"""Baselines of the benchmark: what a user would pick instead of an allocator.

Simulator-only bench entries, not trainer allocators (``--rollout_allocator`` does not
know them): they follow the same contract (:class:`RolloutAllocator`) and run through the
same step loop, so every rollout they draw is counted as for the allocators.

- ``dynamic_filtering``: OpenRLHF 0.11.2's ``--algo.dynamic_filtering_enable``;
- ``oversample_even``: k x the prompts, the budget split evenly, no posterior;
- ``beta_greedy``: a Beta posterior per prompt with forgetting, greedy on expected
  rollouts in mixed-reward groups.

``uniform`` (the registered allocator, stock OpenRLHF) is the fourth baseline.
"""

from __future__ import annotations

from openrlhf_cero.allocators.base import AllocatorError, RolloutAllocator
from openrlhf_cero.sim.baselines.beta_greedy import BetaGreedyBaseline
from openrlhf_cero.sim.baselines.dynamic_filtering import DynamicFilteringBaseline
from openrlhf_cero.sim.baselines.oversample_even import OversampleEvenBaseline

BASELINES: dict[str, type[RolloutAllocator]] = {
    cls.name: cls for cls in (DynamicFilteringBaseline, OversampleEvenBaseline, BetaGreedyBaseline)
}
# Every baseline of the tables, uniform first.
BASELINE_NAMES = ("uniform", *BASELINES)


def baseline_class(name: str) -> type[RolloutAllocator]:
    try:
        return BASELINES[name]
    except KeyError:
        raise AllocatorError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}") from None


__all__ = ["BASELINES", "BASELINE_NAMES", "baseline_class"]
