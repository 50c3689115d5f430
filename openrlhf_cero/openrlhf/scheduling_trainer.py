"""The rollout scheduler inside OpenRLHF's trainers (sync ``PPOTrainer``, async ``TrainingActor``).

Where it hooks in, in ``BasePPOTrainer.train_step`` order:

1. ``make_experience_batch`` (:class:`SchedulingExperienceMaker`): OpenRLHF makes the
   step's experiences and advantages over the full drawn groups; the scheduler picks the
   training rollouts from them and its buffer; the actor's log-probabilities of the
   *reused* rollouts under the current (pre-update) policy are taken now, one forward.
2. ``_compute_rollout_stats``: OpenRLHF's ``rollout/*`` figures stay those of the fresh
   rollouts, what was generated this step.
3. ``ppo_train``: after OpenRLHF's update, one forward of every trained rollout through the
   updated actor gives each rollout's gain, which the scheduler gets as ``feedback``.
4. ``train_step`` adds ``scheduler/*`` to the status dict (logged like OpenRLHF's own).
5. ``save_logs_and_checkpoints`` puts the scheduler's state and buffered payloads in
   ``client_states``; ``init_checkpoint_states`` restores them on ``--ckpt.load_enable``.

In async mode all of this happens in the ``TrainingActor``: the scheduler works on the
experiences, which only exist there.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.utils.logging_utils import init_logger

from openrlhf_cero.openrlhf.advantages import VariableGroupExperienceMaker
from openrlhf_cero.openrlhf.scheduler_flags import scheduler_from_args, scheduler_name
from openrlhf_cero.openrlhf.scheduling import (
    SCHEDULER_STATE_KEY,
    ScheduledTraining,
    StepPlan,
    batch_items,
    forward_partitions,
    rollout_advantage,
    rollout_gains,
)

logger = init_logger(__name__)


class SchedulingExperienceMaker(VariableGroupExperienceMaker):
    """Variable-group experiences, then the scheduler's choice of what trains."""

    scheduling: ScheduledTraining

    def attach(self, scheduling: ScheduledTraining) -> None:
        self.scheduling = scheduling
        self.fresh_experiences: List[Experience] = []
        self._before: List[torch.Tensor] = []

    @torch.no_grad()
    def make_experience_batch(self, rollout_samples) -> List[Experience]:
        experiences = super().make_experience_batch(rollout_samples)
        self.fresh_experiences = experiences
        plan = self.scheduling.plan(experiences, self._groups)
        self._before = self._log_probs_before(plan)
        return plan.batches

    def _log_probs_before(self, plan: StepPlan) -> List[torch.Tensor]:
        """log pi_before of every trained rollout: a fresh one's ``action_log_probs`` (the
        actor's forward of this very step, before the update); a reused one's stored
        log-probs belong to the older policy that drew it, so it gets a forward now."""
        reused = [item for item, is_reused in zip(plan.trained, plan.reused) if is_reused]
        forwarded = iter(self.actor_log_probs(reused)) if reused else iter(())
        return [
            next(forwarded) if is_reused else item.action_log_probs
            for item, is_reused in zip(plan.trained, plan.reused)
        ]

    @torch.no_grad()
    def actor_log_probs(self, items: Sequence[Experience]) -> List[torch.Tensor]:
        """The actor group's action log-probabilities of ``items`` (one row each), through the
        same ``forward`` the experience maker calls, spread over the data-parallel ranks."""
        args = self.strategy.args
        duplicate = args.ds.ring_attn_size * args.ds.tensor_parallel_size
        ranks = max(1, len(getattr(self.actor_model_group, "_actor_handlers", [None])) // duplicate)
        partitions = forward_partitions(items, args, ranks)
        batches = [batch_items([items[row] for row in part], len(part))[0] for part in partitions]
        refs = self._dispatch_forward(
            self.actor_model_group,
            args.train.colocate_all or args.train.colocate_actor_ref,
            sequences=[b.sequences for b in batches],
            action_mask=[b.action_mask for b in batches],
            attention_mask=[b.attention_mask for b in batches],
        )
        found: dict[int, torch.Tensor] = {}
        for part, out in zip(partitions, self._flatten_results(refs, duplicate)):
            for row, log_probs in zip(part, out):
                found.setdefault(row, log_probs)
        return [found[row] for row in range(len(items))]

    def report_gains(self) -> None:
        """After the update: each trained rollout's gain to the scheduler (``feedback``)."""
        plan = self.scheduling.last_plan
        if plan is None or not self._before:
            return
        after = self.actor_log_probs(plan.trained)
        advantages = np.array([rollout_advantage(item) for item in plan.trained])
        gains = rollout_gains(advantages, self._before, after, [item.action_mask for item in plan.trained])
        self.scheduling.scheduler.feedback(plan.trained_ids, gains)
        self._before = []


def install_scheduling_maker(owner) -> None:
    """Give ``owner`` (the trainer that makes experiences) a scheduling experience maker."""
    maker = SchedulingExperienceMaker.replacing(owner.experience_maker)
    maker.attach(ScheduledTraining(scheduler_from_args(owner.args), owner.args.rollout.micro_batch_size))
    owner.experience_maker = maker


class SchedulesRollouts:
    """Mixin for OpenRLHF's training actors; inert with ``--rollout_scheduler none``."""

    def _scheduling_maker(self) -> SchedulingExperienceMaker | None:
        maker = getattr(self, "experience_maker", None)
        return maker if isinstance(maker, SchedulingExperienceMaker) else None

    def train_step(self, rollout_samples, global_step: int):
        status, global_step = super().train_step(rollout_samples, global_step)
        maker = self._scheduling_maker()
        if maker is not None:
            figures = maker.scheduling.scheduler.metrics()
            status.update({f"scheduler/{key}": float(value) for key, value in figures.items()})
        return status, global_step

    def _compute_rollout_stats(self, experiences) -> Dict:
        maker = self._scheduling_maker()
        fresh = maker.fresh_experiences if maker is not None and maker.fresh_experiences else experiences
        return super()._compute_rollout_stats(fresh)

    def ppo_train(self, global_steps: int) -> Dict:
        status = super().ppo_train(global_steps)
        maker = self._scheduling_maker()
        if maker is not None:
            maker.report_gains()
        return status

    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        maker = self._scheduling_maker()
        if maker is not None and client_states is not None:
            # In place: OpenRLHF hands the same dict to save_best_checkpoint afterwards.
            client_states[SCHEDULER_STATE_KEY] = maker.scheduling.state_dict()
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)

    def init_checkpoint_states(self) -> Dict:
        states = super().init_checkpoint_states()
        maker = self._scheduling_maker()
        if maker is None or not states.get("global_step"):
            return states
        saved: Any = states.get(SCHEDULER_STATE_KEY)
        if saved is None:
            logger.warning(
                "the checkpoint has no rollout-scheduler state (written without --rollout_scheduler, or by an older "
                "version): the %s scheduler starts fresh with an empty buffer", scheduler_name(self.args),
            )
        else:
            maker.scheduling.load_state_dict(saved)
            logger.info(
                "restored the %s scheduler with %d buffered rollouts", saved["scheduler"], len(saved["payloads"])
            )
        return states
