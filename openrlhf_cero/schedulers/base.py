"""The scheduler contract: which rollouts a training step trains on.

An allocator (``openrlhf_cero.allocators``) decides how many rollouts each prompt gets.
A scheduler works on the other axis: once a step's rollouts are drawn, scored and given
their advantages, it decides which of them, and which rollouts kept from earlier steps,
make up the step's training batch. The two combine (``--rollout_allocator cero
--rollout_scheduler cbs``).

One step, as the trainer, the simulator and the tests run it:

    selection = sched.select(fresh, train_size)
    # fresh: a RolloutTable, one row per rollout drawn this step (groups contiguous);
    # train on fresh rows ``selection.train_fresh`` and on the stored payloads of the
    # earlier rollouts ``selection.train_reused``; afterwards keep the payloads of
    # ``selection.kept`` (the buffer now) and drop every other.
    ... the policy update ...
    sched.feedback(trained_ids, gains)        # the bandit reward of each trained rollout
    sched.state_dict() / sched.load_state_dict(d); sched.metrics()

Rules every scheduler obeys (tests check them):

- ``len(train_fresh) + len(train_reused) == train_size`` whenever the fresh rollouts and
  the buffer together hold that many; the trainer passes the number of samples OpenRLHF
  expects for the step (the fresh count), so micro-batching and the optimizer hold.
- A rollout is given one id for its whole life (``selection.fresh_ids``, counted by the
  scheduler, stable across save/load); reused and kept ids are always ids the scheduler
  returned as fresh in an earlier step.
- No reused or kept rollout is older than ``max_staleness`` steps (age 1 = drawn in the
  step before): its payload keeps the log-probabilities of the policy that drew it, and
  PPO's ratio and clipping correct for the difference only while it is small.
- The buffer never holds more than ``buffer_size`` rollouts.
- Same seed + same inputs => same selection, also after ``state_dict``/``load_state_dict``.
- A NaN reward or advantage is an error naming the rollout's row.

The gain a caller reports in ``feedback`` is defined in docs/cbs.md: the first-order
change that the step's update made to the policy-gradient surrogate on that rollout,
``advantage * mean over its tokens of (log pi_after - log pi_before)``. A caller that
cannot measure it reports nothing, and the scheduler's scorer then stays as it is.

This package imports numpy and torch (the scorer is a small MLP) but never Ray or
OpenRLHF: the same objects run in the simulator, in tests and in OpenRLHF's actors.
State dicts hold numpy arrays and tensors (``torch.save``-able, as OpenRLHF's
``client_states`` are), not JSON.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from openrlhf_cero.allocators.base import OptionSpec

STATE_VERSION = 1


class SchedulerError(ValueError):
    """Bad scheduler input or settings; the message names the flag or value at fault."""


@dataclass(frozen=True)
class RolloutTable:
    """A step's fresh rollouts, one row each, the rows of a group contiguous.

    ``advantage`` is what the trainer computed for the rollout over its whole drawn group
    (a partly selected group keeps the baseline of every rollout drawn for it; docs/cbs.md).
    ``length`` is the response length in tokens (the simulator passes 1).
    """

    prompt_id: np.ndarray  # uint64, stable prompt ids (allocators.ids)
    group: np.ndarray  # int64, group number within the step, non-decreasing
    reward: np.ndarray  # float64
    advantage: np.ndarray  # float64
    length: np.ndarray  # float64

    def __post_init__(self) -> None:
        size = len(self.reward)
        for name in ("prompt_id", "group", "reward", "advantage", "length"):
            column = np.asarray(getattr(self, name))
            if column.ndim != 1 or len(column) != size:
                raise SchedulerError(f"RolloutTable.{name} must be one-dimensional with {size} rows, got {column.shape}")
        for name in ("reward", "advantage", "length"):
            bad = np.flatnonzero(~np.isfinite(np.asarray(getattr(self, name), dtype=np.float64)))
            if bad.size:
                raise SchedulerError(
                    f"rollout {name} is not finite (NaN or inf) at rows {bad[:8].tolist()}: the reward function must "
                    "return a finite number for every response"
                )
        if size and np.any(np.diff(np.asarray(self.group)) < 0):
            raise SchedulerError("RolloutTable.group must be non-decreasing: the rows of a group are contiguous")

    def __len__(self) -> int:
        return len(self.reward)

    @classmethod
    def from_groups(
        cls,
        prompt_ids: np.ndarray,
        rewards: list[np.ndarray],
        advantages: list[np.ndarray],
        lengths: list[np.ndarray] | None = None,
    ) -> "RolloutTable":
        """Rows from per-group lists (the allocator's view of a step)."""
        sizes = np.array([len(r) for r in rewards], dtype=np.int64)
        flat = lambda parts: np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)  # noqa: E731
        return cls(
            prompt_id=np.repeat(np.asarray(prompt_ids, dtype=np.uint64), sizes),
            group=np.repeat(np.arange(len(sizes), dtype=np.int64), sizes),
            reward=flat(rewards),
            advantage=flat(advantages),
            length=flat(lengths) if lengths is not None else np.ones(int(sizes.sum())),
        )


@dataclass(frozen=True)
class Selection:
    """What one step trains on, and what the buffer keeps afterwards."""

    fresh_ids: np.ndarray  # int64, the id given to each fresh row
    train_fresh: np.ndarray  # int64, rows of the fresh table that train
    train_reused: np.ndarray  # int64, ids of buffered rollouts that train
    kept: np.ndarray  # int64, ids the buffer holds after this step (fresh or earlier)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def train_size(self) -> int:
        return len(self.train_fresh) + len(self.train_reused)

    def trained_ids(self) -> np.ndarray:
        """Ids of every trained rollout, fresh first: the order ``feedback`` expects gains in."""
        return np.concatenate([self.fresh_ids[self.train_fresh], self.train_reused]).astype(np.int64)


class RolloutScheduler(ABC):
    """Base class of every scheduler: the contract above, validation and bookkeeping."""

    name: ClassVar[str] = "base"
    options: ClassVar[tuple[OptionSpec, ...]] = ()

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)

    @abstractmethod
    def select(self, fresh: RolloutTable, train_size: int) -> Selection:
        """Choose the step's training rollouts; ages the buffer by one step."""

    @abstractmethod
    def feedback(self, rollout_ids: np.ndarray, gains: np.ndarray) -> None:
        """The bandit reward of rollouts trained in the last ``select``'s step."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Versioned, ``torch.save``-able; loading it into a fresh scheduler resumes exactly."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def metrics(self) -> dict[str, float]:
        """The last step's figures, without prefix (the trainer adds ``scheduler/``):
        ``reuse_share``, ``mean_staleness``, ``selected_share``, ``bandit_reward`` at least."""
