"""``--rollout_scheduler cbs``: the Contextual Rollout Bandit scheduler (docs/cbs.md).

One idea per module: ``options`` (the flags and their checks), ``context`` (what an arm
looks like), ``posterior`` (the per-prompt Beta table it reads), ``scorer`` (neural gain
model + Neural-LinUCB exploration), ``selection`` (reuse cap, top-k, sign balance),
``buffer`` (bounded, staleness-limited reuse) and ``scheduler`` (the
``RolloutScheduler`` tying them together).
"""

from openrlhf_cero.schedulers.cbs.scheduler import ContextualBanditScheduler

__all__ = ["ContextualBanditScheduler"]
