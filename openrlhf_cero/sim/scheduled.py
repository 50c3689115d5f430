"""A simulated training step whose batch a rollout scheduler chooses (``--rollout_scheduler``).

The trainer's order, reproduced per step (schedulers/base.py):

1. the step's drawn groups get their advantages over the whole drawn group
   (:func:`rollouts.rollout_advantages`) and become a :class:`RolloutTable`;
2. ``scheduler.select(fresh, train_size)`` with ``train_size`` = the fresh count (what
   OpenRLHF expects for the step) picks fresh rows and buffered rollouts;
3. the policy trains on them by OpenRLHF's loss, per rollout with PPO's ratio and clip
   (:func:`rollouts.clipped_gradient`): a reused rollout carries the log-probability of the
   policy that drew it, as its payload does in the trainer; token-mean over the trained batch;
4. each trained rollout's gain A_j (log pi_after(y_j) - log pi_before(y_j)) is computed from
   the update's change of its prompt's logit (drift excluded: it is the same whichever
   rollouts trained) and goes to ``scheduler.feedback``;
5. the payloads of ``selection.kept`` stay, every other is dropped.

The per-rollout gradients are summed per drawn group (a reused rollout sums with the other
trained rollouts of the group it was drawn in) before the world applies them, so with every
rollout trained fresh the step is the group rule of :meth:`PromptWorld.step_gradients`,
``adam`` normalisation included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from openrlhf_cero.schedulers.base import RolloutScheduler, RolloutTable, SchedulerError, Selection
from openrlhf_cero.sim.rollouts import PPO_CLIP_EPS, clipped_gradient, group_of_rows, rollout_advantages, rollout_gains
from openrlhf_cero.sim.world import PromptWorld

_COLUMNS = ("prompt", "reward", "advantage", "theta_drew", "group_key", "mixed", "trained_before")


@dataclass
class Payloads:
    """What the trainer keeps of each buffered rollout, by the id the scheduler gave it: its
    prompt (train index), reward, advantage, the logit of the policy that drew it (its stored
    log-probability), the drawn group it belongs to, whether that group had mixed rewards and
    whether the rollout has trained before (so effective rollouts are counted once)."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    prompt: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    reward: np.ndarray = field(default_factory=lambda: np.zeros(0))
    advantage: np.ndarray = field(default_factory=lambda: np.zeros(0))
    theta_drew: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_key: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mixed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    trained_before: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return self.ids.size

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id; a SchedulerError for an id no payload is kept for (the contract says
        reused and kept ids are ids returned earlier and still buffered)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return np.zeros(0, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        known = self.ids[order]
        pos = np.minimum(np.searchsorted(known, ids), max(known.size - 1, 0))
        missing = ids[known[pos] != ids] if known.size else ids
        if missing.size:
            raise SchedulerError(f"the scheduler named rollout id(s) {missing[:8].tolist()} that the buffer does not hold")
        return order[pos]

    def subset(self, rows: np.ndarray) -> "Payloads":
        return Payloads(ids=self.ids[rows], **{c: getattr(self, c)[rows] for c in _COLUMNS})

    @staticmethod
    def concat(a: "Payloads", b: "Payloads") -> "Payloads":
        return Payloads(
            ids=np.concatenate([a.ids, b.ids]), **{c: np.concatenate([getattr(a, c), getattr(b, c)]) for c in _COLUMNS}
        )


@dataclass
class StepFigures:
    """What one scheduled step trained, for the run record."""

    trained: int  # rollouts in the training batch (fresh + reused)
    reused: int
    clipped: int  # reused rollouts whose gradient PPO's clip cut
    trained_groups: int  # drawn groups of this step with at least one fresh rollout trained
    mixed_groups: int  # of those, groups with both outcomes
    rollouts_mixed: int  # rollouts trained for the first time that belong to a mixed drawn group
    select_seconds: float
    feedback_seconds: float
    metrics: dict[str, float]


class ScheduledTrainer:
    """Trains a :class:`PromptWorld` on the batches a scheduler picks; keeps the buffer's payloads."""

    def __init__(self, world: PromptWorld, scheduler: RolloutScheduler, clip_eps: float = PPO_CLIP_EPS) -> None:
        self.world = world
        self.scheduler = scheduler
        self.clip_eps = float(clip_eps)
        self.buffer = Payloads()
        self._next_group_key = 0

    def fresh_payloads(self, index: np.ndarray, rewards: list[np.ndarray], ids: np.ndarray) -> tuple[Payloads, RolloutTable]:
        """The step's drawn rollouts as payloads (drawn at the current policy) and as the table."""
        world = self.world
        index = np.asarray(index, dtype=np.int64)
        sizes = np.array([r.size for r in rewards], dtype=np.int64)
        flat = np.concatenate(rewards).astype(np.float64) if rewards else np.zeros(0)
        group = group_of_rows(sizes)
        advantage = rollout_advantages(sizes, flat, world.scenario.signal)
        wins = np.bincount(group, weights=flat, minlength=sizes.size)
        mixed = (wins > 0) & (wins < sizes)
        table = RolloutTable(
            prompt_id=world.ids[index][group], group=group, reward=flat, advantage=advantage, length=np.ones(flat.size)
        )
        payloads = Payloads(
            ids=np.asarray(ids, dtype=np.int64),
            prompt=index[group],
            reward=flat,
            advantage=advantage,
            theta_drew=world.theta[index][group],
            group_key=self._next_group_key + group,
            mixed=mixed[group],
            trained_before=np.zeros(flat.size, dtype=bool),
        )
        return payloads, table

    def step(self, index: np.ndarray, rewards: list[np.ndarray]) -> StepFigures:
        """One training step on the drawn groups (prompts ``index``, rewards per group)."""
        world = self.world
        sizes = np.array([r.size for r in rewards], dtype=np.int64)
        placeholder = np.zeros(int(sizes.sum()), dtype=np.int64)
        fresh, table = self.fresh_payloads(index, rewards, placeholder)
        start = time.perf_counter()
        selection: Selection = self.scheduler.select(table, int(sizes.sum()))
        select_seconds = time.perf_counter() - start
        fresh.ids = np.asarray(selection.fresh_ids, dtype=np.int64)
        self._next_group_key += sizes.size
        train_fresh = np.asarray(selection.train_fresh, dtype=np.int64)
        trained = Payloads.concat(fresh.subset(train_fresh), self.buffer.subset(self.buffer.rows(selection.train_reused)))
        reused = trained.ids.size - train_fresh.size

        theta_before = world.theta.copy()
        solvable = ~world.unsolvable[trained.prompt]
        gradient, clipped = clipped_gradient(
            theta_before[trained.prompt], trained.theta_drew, trained.reward, trained.advantage, solvable, self.clip_eps
        )
        # token-mean over the trained batch, times the common scale (world.py)
        scale = world.scenario.batch_size / max(trained.ids.size, 1)
        keys, first, inverse = np.unique(trained.group_key, return_index=True, return_inverse=True)
        per_group = np.bincount(inverse, weights=gradient * scale, minlength=keys.size)
        _, update = world.apply_gradients(trained.prompt[first], per_group)
        gains = rollout_gains(
            theta_before[trained.prompt], (theta_before + update)[trained.prompt], trained.reward, trained.advantage, solvable
        )
        start = time.perf_counter()
        self.scheduler.feedback(selection.trained_ids(), gains)
        feedback_seconds = time.perf_counter() - start

        first_time = ~trained.trained_before
        fresh.trained_before[train_fresh] = True
        everything = Payloads.concat(self.buffer, fresh)
        everything.trained_before[everything.rows(trained.ids)] = True
        self.buffer = everything.subset(everything.rows(selection.kept))
        fresh_groups = np.unique(table.group[train_fresh])
        wins = np.bincount(table.group, weights=table.reward, minlength=sizes.size)
        group_mixed = ((wins > 0) & (wins < sizes))[fresh_groups]
        return StepFigures(
            trained=int(trained.ids.size),
            reused=int(reused),
            clipped=int(clipped[train_fresh.size :].sum()),
            trained_groups=int(fresh_groups.size),
            mixed_groups=int(group_mixed.sum()),
            rollouts_mixed=int((first_time & trained.mixed).sum()),
            select_seconds=select_seconds,
            feedback_seconds=feedback_seconds,
            metrics=dict(self.scheduler.metrics()),
        )
