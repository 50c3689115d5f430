"""The rollout scheduler's plumbing in OpenRLHF: per-rollout items, selection, re-batching, payloads.

A step's experiences leave OpenRLHF's experience maker as micro-batches with their
advantages already computed over each whole drawn group (``VariableGroupExperienceMaker``).
Here they are cut into one ``Experience`` per rollout, in sample order, described to the
scheduler as a :class:`RolloutTable`, and the step's training batch is formed again from
the chosen fresh rollouts and the buffered payloads of earlier ones, in micro-batches of
``--rollout.micro_batch_size`` with OpenRLHF's own batching function. A buffered payload is
the rollout exactly as it was trained or drawn: its ``action_log_probs`` stay those of the
policy that drew it (PPO's ratio and clipping then correct for its age), and its
advantage stays the one of its full drawn group.

No Ray here: everything works on ``Experience`` objects on CPU, so unit tests exercise it
with OpenRLHF's real classes. The trainer side (forwards through the actor group, status,
checkpoints) is :mod:`openrlhf_cero.openrlhf.scheduling_trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from openrlhf.trainer.ppo_utils.experience import (
    Experience,
    make_experience_batch,
    remove_padding_in_sequences,
    split_experience_batch,
)

from openrlhf.utils.seqlen_balancing import get_minimum_num_micro_batch_size, get_seqlen_balanced_partitions

from openrlhf_cero.allocators.ids import prompt_id
from openrlhf_cero.schedulers import RolloutScheduler, RolloutTable, SchedulerError, Selection

SCHEDULER_STATE_KEY = "rollout_scheduler"
STATE_VERSION = 1


def split_items(experiences: Sequence[Experience]) -> list[Experience]:
    """One single-rollout ``Experience`` per sample, in sample order (``Experience.index``,
    the position OpenRLHF's ``split_rollout_samples`` gave it), right padding removed.

    OpenRLHF's ``split_experience_batch`` drops ``index``; it is read first and put back
    on the batch, so the caller's experiences are left as they were."""
    positioned: list[tuple[int, Experience]] = []
    for experience in experiences:
        index = list(experience.index) if experience.index is not None else None
        items = split_experience_batch(experience)
        experience.index = index
        if index is None or len(index) != len(items):
            raise SchedulerError("an experience without its sample positions (Experience.index) cannot be scheduled")
        positioned.extend(zip(index, items))
    positioned.sort(key=lambda pair: pair[0])
    if [position for position, _ in positioned] != list(range(len(positioned))):
        raise SchedulerError("the step's experiences do not hold each sample position exactly once")
    return remove_padding_in_sequences([item for _, item in positioned])


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of a per-token tensor over a rollout's action tokens (0 for an empty response)."""
    mask = mask.to(torch.float64)
    count = float(mask.sum())
    return float((values.to(torch.float64) * mask).sum()) / count if count else 0.0


def rollout_advantage(item: Experience) -> float:
    """The rollout's advantage as one number: its per-token advantages' mean over the
    response (for the critic-free estimators they differ only by per-token KL shaping)."""
    return token_mean(item.advantages, item.action_mask)


def rollout_table(items: Sequence[Experience], groups: torch.Tensor) -> RolloutTable:
    """The scheduler's view of the step's fresh rollouts (``groups``: group number per sample).

    A non-finite reward is refused here, naming the rollout and its prompt, before the
    scheduler sees it (its own check could only name a row)."""
    if len(groups) != len(items):
        raise SchedulerError(f"{len(items)} rollouts but {len(groups)} group numbers")
    # info["reward"] is the reward function's score as OpenRLHF logs it; Experience.rewards
    # (the same, after length penalties) stands in where an executor left info without it.
    rewards = np.array([float(item.info.get("reward", item.rewards)) for item in items], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        row = int(bad[0])
        text, label = items[row].prompts[0], items[row].labels[0] if items[row].labels else ""
        raise SchedulerError(
            f"rollout {row} of the step (prompt {prompt_id(text, label)} {str(text)[:80]!r}) has reward "
            f"{rewards[row]}; {bad.size} of {len(items)} rollouts are not finite. The reward function "
            "(--reward.remote_url) must return a finite number for every response"
        )
    return RolloutTable(
        prompt_id=np.array(
            [prompt_id(item.prompts[0], item.labels[0] if item.labels else "") for item in items], dtype=np.uint64
        ),
        group=np.asarray(groups, dtype=np.int64),
        reward=rewards,
        advantage=np.array([rollout_advantage(item) for item in items], dtype=np.float64),
        length=np.array([float(item.action_mask.sum()) for item in items], dtype=np.float64),
    )


def batch_items(items: Sequence[Experience], micro_batch_size: int) -> list[Experience]:
    """Micro-batches of ``micro_batch_size`` rollouts, as OpenRLHF's replay buffer batches
    single rollouts (``make_experience_batch``). ``info`` keeps the keys every rollout has
    (``group_reward_std`` exists only in steps whose groups all have 2+ samples), and
    per-rollout scalars are stacked into one tensor, the form OpenRLHF's own batches have."""
    shared = set.intersection(*(set(item.info) for item in items)) if items else set()
    batches = []
    for start in range(0, len(items), micro_batch_size):
        chunk = [_with_info(item, shared) for item in items[start : start + micro_batch_size]]
        batch = make_experience_batch(chunk)
        for key, value in batch.info.items():
            if isinstance(value, list) and value and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in value):
                batch.info[key] = torch.stack(value)
        batches.append(batch)
    return batches


def _with_info(item: Experience, keys: set[str]) -> Experience:
    copy = Experience(**{f.name: getattr(item, f.name) for f in fields(Experience)})
    copy.info = {key: value for key, value in item.info.items() if key in keys}
    return copy


def forward_partitions(items: Sequence[Experience], args: Any, ranks: int) -> list[list[int]]:
    """Rows of ``items`` per forward batch, batched as OpenRLHF's ``split_rollout_samples``
    batches a step for the experience maker's forward: token-balanced under
    ``--rollout.max_tokens_per_gpu`` with ``--train.dynamic_batch_enable``, else chunks of
    ``--rollout.micro_batch_size``; at least one batch per data-parallel rank (``ranks``),
    since OpenRLHF's ``async_run_method_batch`` refuses fewer. A rank's batch may repeat
    the last row when there are fewer rollouts than ranks (the caller drops the copies)."""
    rows = list(range(len(items)))
    if not rows:
        return []
    if args.train.dynamic_batch_enable:
        lengths = [int(item.total_length) for item in items]
        minimum = get_minimum_num_micro_batch_size(
            lengths, args.rollout.max_tokens_per_gpu, args.ds.ring_attn_size, args.ds.tensor_parallel_size
        )
        count = max(minimum // ranks * ranks, ranks)
        if len(rows) < count:
            return [[row] for row in rows] + [[rows[-1]]] * (count - len(rows))
        return [sorted(part) for part in get_seqlen_balanced_partitions(lengths, count, False)]
    count = max(ranks, -(-len(rows) // int(args.rollout.micro_batch_size)))
    if len(rows) < count:
        return [[row] for row in rows] + [[rows[-1]]] * (count - len(rows))
    size = -(-len(rows) // count)
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def item_state(item: Experience) -> dict[str, Any]:
    """A buffered rollout as plain tensors, lists and strings (``torch.save``-able without
    OpenRLHF's class); tensors are cloned so the payload does not pin its step's batch."""
    state: dict[str, Any] = {}
    for f in fields(Experience):
        value = getattr(item, f.name)
        if isinstance(value, torch.Tensor):
            state[f.name] = value.detach().clone()
        elif isinstance(value, dict):
            state[f.name] = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        elif value is not None:
            state[f.name] = list(value) if isinstance(value, list) else value
    return state


def item_from_state(state: dict[str, Any]) -> Experience:
    known = {f.name for f in fields(Experience)}
    unknown = set(state) - known
    if unknown:
        raise SchedulerError(f"a buffered rollout in the checkpoint has fields this OpenRLHF lacks: {sorted(unknown)}")
    return Experience(**state)


@dataclass
class StepPlan:
    """What one step trains on: ``batches`` (the micro-batches OpenRLHF appends), the
    rollouts in training order (fresh first, then reused, as ``trained_ids``), and which
    of them were reused."""

    selection: Selection
    trained: list[Experience]
    trained_ids: np.ndarray
    reused: np.ndarray  # bool per trained rollout
    batches: list[Experience]


class ScheduledTraining:
    """A scheduler and the payloads of the rollouts its buffer holds."""

    def __init__(self, scheduler: RolloutScheduler, micro_batch_size: int) -> None:
        if micro_batch_size < 1:
            raise SchedulerError(f"--rollout.micro_batch_size={micro_batch_size} must be >= 1")
        self.scheduler = scheduler
        self.micro_batch_size = int(micro_batch_size)
        self.payloads: dict[int, Experience] = {}
        self.last_plan: StepPlan | None = None

    def plan(self, experiences: Sequence[Experience], groups: torch.Tensor) -> StepPlan:
        """Select the step's training rollouts and keep the payloads of ``selection.kept``."""
        items = split_items(experiences)
        table = rollout_table(items, groups)
        selection = self.scheduler.select(table, train_size=len(items))
        fresh_ids = np.asarray(selection.fresh_ids, dtype=np.int64)
        missing = [int(i) for i in selection.train_reused if int(i) not in self.payloads]
        if missing:
            raise SchedulerError(
                f"the {self.scheduler.name} scheduler reuses rollouts {missing[:8]} whose payloads are not buffered"
            )
        reused_items = [self.payloads[int(i)] for i in selection.train_reused]
        trained = [items[int(row)] for row in selection.train_fresh] + reused_items
        if len(trained) != len(items):
            raise SchedulerError(
                f"the {self.scheduler.name} scheduler chose {len(trained)} rollouts for a step of {len(items)}; "
                "OpenRLHF's batch size must hold"
            )
        fresh_by_id = {int(rid): items[row] for row, rid in enumerate(fresh_ids)}
        kept: dict[int, Experience] = {}
        for rid in (int(i) for i in selection.kept):
            if rid in fresh_by_id:
                kept[rid] = item_from_state(item_state(fresh_by_id[rid]))  # compact, own storage
            elif rid in self.payloads:
                kept[rid] = self.payloads[rid]
            else:
                raise SchedulerError(f"the {self.scheduler.name} scheduler keeps rollout {rid}, which it never had")
        self.payloads = kept
        reused = np.zeros(len(trained), dtype=bool)
        reused[len(selection.train_fresh) :] = True
        self.last_plan = StepPlan(
            selection=selection,
            trained=trained,
            trained_ids=selection.trained_ids(),
            reused=reused,
            batches=batch_items(trained, self.micro_batch_size),
        )
        return self.last_plan

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "scheduler": self.scheduler.name,
            "state": self.scheduler.state_dict(),
            "payloads": {rid: item_state(item) for rid, item in self.payloads.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise SchedulerError(f"rollout-scheduler state version {state.get('version')!r}; expected {STATE_VERSION}")
        if state.get("scheduler") != self.scheduler.name:
            raise SchedulerError(
                f"the checkpoint holds a {state.get('scheduler')!r} scheduler, this run uses --rollout_scheduler "
                f"{self.scheduler.name}"
            )
        self.scheduler.load_state_dict(owned_copy(state["state"]))
        self.payloads = {int(rid): item_from_state(owned_copy(payload)) for rid, payload in state["payloads"].items()}
        self.last_plan = None


def owned_copy(value: Any) -> Any:
    """``value`` with every array and tensor copied into memory of its own. Checkpoint
    states reach the trainer through Ray, whose zero-copy deserialisation hands out
    read-only numpy arrays (and tensors over them); a scheduler that updates its loaded
    arrays in place would fail (or, for tensors, write into shared memory)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: owned_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(owned_copy(item) for item in value)
    return value


def rollout_gains(
    advantages: np.ndarray, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> np.ndarray:
    """Each trained rollout's bandit reward: ``advantage * mean over its action tokens of
    (log pi_after - log pi_before)``, the first-order change the update made to the
    policy-gradient surrogate on that rollout (docs/cbs.md)."""
    gains = np.empty(len(advantages), dtype=np.float64)
    for i, (adv, old, new, mask) in enumerate(zip(advantages, before, after, masks)):
        width = int(mask.shape[-1])
        gains[i] = float(adv) * token_mean(new[..., :width] - old[..., :width], mask)
    return gains
