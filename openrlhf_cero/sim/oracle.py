"""``oracle``: a simulator-only allocator that sees the latent state of the simulated policy.

It is the reference each allocator and baseline is measured against. Each step it is
offered ``pool_factor`` x the prompts of a step (``prompts_wanted``) and chooses which
of them to train and how many rollouts each gets, to maximise the expected one-step rise
of the scenario's own objective (mean train, or held-out, pass rate) under the
simulator's learning rule (:mod:`openrlhf_cero.sim.world`):

    maximise  sum_i c_i E[g(n_i; p_i)]   s.t.  sum_i n_i = budget,  n_i in {0} u [min_samples, max_samples]

- g(n; p) = sum_j A_j (r_j - p), the group's gradient of OpenRLHF's loss
  (:func:`openrlhf_cero.sim.signal.expected_group_gradient`, exact expectation over
  Binomial(n, p), read from a fine pass-rate grid);
- c_i = d objective / d G_i to first order (:meth:`PromptWorld.improvement_weights`):
  p_i (1 - p_i) lr_self for the prompt itself plus the topic and global transfer it
  causes, with the true pass rates of every prompt.

The step's sample count N_step is the budget whatever the choice, so dividing by it
changes nothing. The solver (:func:`openrlhf_cero.sim.allocate.best_counts`) is optimal up
to one partial group. What the oracle leaves out: the effect of a step on later steps (it
is myopic), and for ``reinforce_baseline`` the dependence of OpenRLHF's whitening factor on
the allocation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator
from openrlhf_cero.sim.allocate import best_counts
from openrlhf_cero.sim.signal import expected_group_gradient_lookup

if TYPE_CHECKING:
    from openrlhf_cero.sim.world import PromptWorld

DEFAULT_POOL_FACTOR = 4.0


class OracleAllocator(RolloutAllocator):
    name = "oracle"
    options = (
        OptionSpec(
            "pool_factor", float, DEFAULT_POOL_FACTOR,
            "prompts offered per step, as a multiple of the step's budget / n; the oracle trains the best of them",
        ),
    )

    def __init__(self, *, world: "PromptWorld", pool_factor: float = DEFAULT_POOL_FACTOR, **settings) -> None:
        super().__init__(**settings)
        if not math.isfinite(float(pool_factor)) or float(pool_factor) < 1.0:
            raise AllocatorError(f"oracle pool_factor={pool_factor!r} must be a number >= 1")
        self._world = world
        self.pool_factor = float(pool_factor)
        self.estimator = world.scenario.signal

    def prompts_wanted(self, budget: int) -> int:
        return math.ceil(int(budget) * self.pool_factor / self.n_samples_per_prompt)

    def value_table(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Expected one-step rise of the objective for n = 0..max_samples rollouts of each prompt
        (up to the common factor 1 / N_step)."""
        p = self._world.pass_rates_of(prompt_ids)
        weight = self._world.improvement_weights(prompt_ids)
        return weight[:, None] * expected_group_gradient_lookup(p, self.max_samples, self.estimator)

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        return best_counts(self.value_table(prompt_ids), budget, self.min_samples, self.max_samples)
