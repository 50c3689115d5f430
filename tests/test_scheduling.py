"""The scheduler's plumbing in OpenRLHF (openrlhf_cero/openrlhf/scheduling.py) on real
OpenRLHF ``Experience`` objects: cutting a step into rollouts, the table the scheduler
sees, re-forming the training batch from fresh and buffered rollouts, the payloads kept,
and a checkpoint round trip after which the next steps are identical.

The scheduler used here, :class:`ReplayTestScheduler`, is TEST-ONLY: a deterministic rule
(train the first fresh rows, fill the rest with the oldest buffered rollouts) so that reuse
happens on known rows. It is not the CBS scheduler and is never registered.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from openrlhf.trainer.ppo_utils.experience import Experience

from openrlhf_cero.allocators.ids import prompt_id
from openrlhf_cero.openrlhf.scheduling import (
    ScheduledTraining,
    batch_items,
    forward_partitions,
    rollout_gains,
    rollout_table,
    split_items,
)
from openrlhf_cero.schedulers import RolloutScheduler, RolloutTable, SchedulerError, Selection


class ReplayTestScheduler(RolloutScheduler):
    """TEST-ONLY. Reuses the ``keep`` oldest buffered rollouts (no older than
    ``max_staleness``), trains the first fresh rows for the rest of the step, and buffers
    the last ``keep`` fresh rows of every step (trained or not)."""

    name = "replay_test"

    def __init__(self, *, seed: int = 0, keep: int = 2, max_staleness: int = 2) -> None:
        super().__init__(seed=seed)
        self.keep, self.max_staleness = keep, max_staleness
        self.next_id, self.step = 0, 0
        self.born: dict[int, int] = {}  # buffered id -> step drawn
        self.gains: list[tuple[int, float]] = []

    def select(self, fresh: RolloutTable, train_size: int) -> Selection:
        self.step += 1
        ids = np.arange(self.next_id, self.next_id + len(fresh), dtype=np.int64)
        self.next_id += len(fresh)
        alive = sorted(i for i, b in self.born.items() if self.step - b <= self.max_staleness)
        reused = np.array(alive[: self.keep], dtype=np.int64)
        train_fresh = np.arange(train_size - len(reused), dtype=np.int64)
        self.born = {i: self.born[i] for i in alive if i not in set(reused.tolist())}
        self.born.update({int(i): self.step for i in ids[len(ids) - self.keep :]})
        kept = np.array(sorted(self.born), dtype=np.int64)
        return Selection(fresh_ids=ids, train_fresh=train_fresh, train_reused=reused, kept=kept)

    def feedback(self, rollout_ids: np.ndarray, gains: np.ndarray) -> None:
        self.gains += list(zip(rollout_ids.tolist(), gains.tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "step": self.step, "born": dict(self.born), "gains": list(self.gains)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id, self.step = state["next_id"], state["step"]
        self.born, self.gains = dict(state["born"]), list(state["gains"])

    def metrics(self) -> dict[str, float]:
        return {"reuse_share": 0.0, "mean_staleness": 0.0, "selected_share": 1.0, "bandit_reward": 0.0}


def micro_batches(step: int, groups: int = 2, n: int = 4, micro: int = 4) -> tuple[list[Experience], torch.Tensor]:
    """A step's experiences as OpenRLHF's experience maker leaves them: micro-batches of
    ``micro`` rollouts, right-padded, ``index`` = sample position, advantages set."""
    gen = torch.Generator().manual_seed(step)
    total = groups * n
    prompt_len = 3
    lengths = [2 + (i * 3 + step) % 4 for i in range(total)]
    batches = []
    for start in range(0, total, micro):
        rows = range(start, min(start + micro, total))
        width = max(lengths[i] for i in rows)
        seq = torch.zeros(len(rows), prompt_len + width, dtype=torch.long)
        attn = torch.zeros_like(seq)
        act = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, i in enumerate(rows):
            seq[r, : prompt_len + lengths[i]] = torch.randint(1, 100, (prompt_len + lengths[i],), generator=gen)
            attn[r, : prompt_len + lengths[i]] = 1
            act[r, : lengths[i]] = True
        logp = -torch.rand(len(rows), width, generator=gen) * act
        adv = torch.randn(len(rows), 1, generator=gen).expand(-1, width) * act
        reward = torch.tensor([float((i + step) % 2) for i in rows])
        batches.append(
            Experience(
                sequences=seq, attention_mask=attn, action_mask=act, action_log_probs=logp,
                advantages=adv.clone(), returns=adv.clone(), rewards=reward,
                response_length=torch.tensor([float(lengths[i]) for i in rows]),
                total_length=torch.tensor([float(prompt_len + lengths[i]) for i in rows]),
                truncated=torch.zeros(len(rows), dtype=torch.bool), index=list(rows),
                prompts=[f"prompt {step}-{i // n}" for i in rows], labels=[str(i // n) for i in rows],
                info={"reward": reward.clone(), "kl": torch.zeros(len(rows))},
            )
        )
    return batches, torch.arange(total) // n


def test_split_items_gives_rollouts_in_sample_order_without_padding():
    batches, _ = micro_batches(step=1)
    shuffled = [batches[1], batches[0]]  # positions, not list order, decide
    items = split_items(shuffled)
    assert [item.prompts[0] for item in items] == [f"prompt 1-{i // 4}" for i in range(8)]
    assert [int(item.action_mask.sum()) for item in items] == [int(item.action_mask.numel()) for item in items]
    assert batches[0].index == [0, 1, 2, 3]  # OpenRLHF's split drops it; it is put back
    assert torch.equal(items[5].action_log_probs, batches[1].action_log_probs[1, : items[5].action_mask.numel()])


def test_rollout_table_describes_the_fresh_rollouts():
    batches, groups = micro_batches(step=1)
    items = split_items(batches)
    table = rollout_table(items, groups)
    assert table.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert table.prompt_id[0] == np.uint64(prompt_id("prompt 1-0", "0"))
    assert table.reward.tolist() == [float((i + 1) % 2) for i in range(8)]
    assert table.length.tolist() == [float(item.action_mask.sum()) for item in items]
    assert table.advantage[2] == pytest.approx(float(batches[0].advantages[2, 0]))


def test_a_nan_reward_is_refused_naming_the_rollout_and_its_prompt():
    batches, groups = micro_batches(step=1)
    batches[1].info["reward"][2] = float("nan")
    with pytest.raises(SchedulerError, match=r"rollout 6 of the step \(prompt \d+ 'prompt 1-1'\).*--reward.remote_url"):
        rollout_table(split_items(batches), groups)


def test_plan_keeps_the_batch_size_and_the_payloads_of_kept_rollouts():
    training = ScheduledTraining(ReplayTestScheduler(keep=2), micro_batch_size=4)
    first = training.plan(*micro_batches(step=1))
    assert len(first.trained) == 8 and not first.reused.any()  # nothing buffered yet
    assert sorted(training.payloads) == [6, 7]  # trained, and kept for later
    second = training.plan(*micro_batches(step=2))
    assert len(second.trained) == 8 and second.reused.tolist() == [False] * 6 + [True] * 2
    assert second.trained_ids.tolist() == [8, 9, 10, 11, 12, 13, 6, 7]
    assert sorted(training.payloads) == [14, 15]  # 6 and 7 were reused, not kept again


def test_reused_rollouts_keep_their_drawing_policy_log_probs_and_advantages():
    training = ScheduledTraining(ReplayTestScheduler(keep=3), micro_batch_size=4)
    training.plan(*micro_batches(step=1))
    originals = {rid: (p.action_log_probs.clone(), p.advantages.clone(), p.sequences.clone())
                 for rid, p in training.payloads.items()}
    plan = training.plan(*micro_batches(step=2))
    assert plan.reused.tolist() == [False] * 5 + [True] * 3
    assert plan.trained_ids[5:].tolist() == sorted(originals) == [5, 6, 7]
    for rid, item in zip(plan.trained_ids[5:], plan.trained[5:]):
        logp, adv, seq = originals[int(rid)]
        assert torch.equal(item.action_log_probs, logp) and torch.equal(item.advantages, adv)
        assert torch.equal(item.sequences, seq)
    # The training batch: 2 micro-batches of 4 with OpenRLHF's fields, per-rollout info stacked.
    assert [len(b.sequences) for b in plan.batches] == [4, 4]
    assert plan.batches[1].info["reward"].shape == (4,)
    width = plan.trained[5].action_mask.numel()
    assert torch.equal(plan.batches[1].action_log_probs[1, :width], plan.trained[5].action_log_probs)
    assert torch.equal(plan.batches[1].advantages[1, :width], plan.trained[5].advantages)


def test_a_payload_the_scheduler_reuses_but_never_kept_is_an_error():
    training = ScheduledTraining(ReplayTestScheduler(keep=2), micro_batch_size=4)
    training.plan(*micro_batches(step=1))
    training.payloads.pop(6)
    with pytest.raises(SchedulerError, match=r"reuses rollouts \[6\] whose payloads are not buffered"):
        training.plan(*micro_batches(step=2))


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _run(training: ScheduledTraining, steps: range) -> list[list[torch.Tensor]]:
    out = []
    for step in steps:
        plan = training.plan(*micro_batches(step=step))
        out.append([t for b in plan.batches for t in (b.sequences, b.action_log_probs, b.advantages)])
        out[-1].append(torch.tensor(plan.trained_ids))
    return out


def test_checkpoint_round_trip_resumes_identically():
    uninterrupted = ScheduledTraining(ReplayTestScheduler(keep=2), micro_batch_size=4)
    _run(uninterrupted, range(1, 3))
    saved = _roundtrip(uninterrupted.state_dict())
    assert saved["scheduler"] == "replay_test" and sorted(saved["payloads"]) == [14, 15]
    later = _run(uninterrupted, range(3, 6))

    resumed = ScheduledTraining(ReplayTestScheduler(keep=2), micro_batch_size=4)
    resumed.load_state_dict(saved)
    again = _run(resumed, range(3, 6))
    assert resumed.last_plan.reused.sum() == 2
    for a, b in zip(later, again):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_saved_payload_owns_its_storage():
    """A kept rollout is a view into its step's batch; the checkpoint must not save the whole batch."""
    training = ScheduledTraining(ReplayTestScheduler(keep=1), micro_batch_size=4)
    training.plan(*micro_batches(step=1))
    payload = training.state_dict()["payloads"][7]
    assert payload["sequences"].untyped_storage().nbytes() == payload["sequences"].numel() * 8


def test_state_from_another_scheduler_is_refused():
    training = ScheduledTraining(ReplayTestScheduler(), micro_batch_size=4)
    state = training.state_dict()
    state["scheduler"] = "cbs"
    with pytest.raises(SchedulerError, match="--rollout_scheduler replay_test"):
        training.load_state_dict(state)


def test_batch_items_keeps_only_info_every_rollout_has():
    items = split_items(micro_batches(step=1)[0])
    items[0].info["group_reward_std"] = torch.tensor(0.5)
    batch = batch_items(items[:4], 4)[0]
    assert set(batch.info) == {"reward", "kl"}


def test_rollout_gains_are_advantage_times_mean_log_prob_change():
    mask = torch.tensor([True, True, False])
    before = [torch.tensor([-1.0, -2.0, 0.0])]
    after = [torch.tensor([-0.5, -1.0, 9.0, 7.0])]  # wider (padded) forward output
    gains = rollout_gains(np.array([2.0]), before, after, [mask])
    assert gains.tolist() == [pytest.approx(2.0 * (0.5 + 1.0) / 2)]


def test_cbs_through_the_plumbing_reuses_within_the_staleness_limit_and_resumes():
    """The real CBS scheduler on real Experience objects: the batch size holds, reused
    rollouts are buffered payloads no older than max_staleness, feedback is taken, and a
    state saved after step 3 (torch.save round trip) plans steps 4-6 identically."""
    from openrlhf_cero.schedulers import create_scheduler

    def make() -> ScheduledTraining:
        cbs = create_scheduler("cbs", seed=3, warmup_steps=1, max_reuse_share=0.5, max_staleness=2, buffer_size=8)
        return ScheduledTraining(cbs, micro_batch_size=4)

    def step(training: ScheduledTraining, number: int) -> list[torch.Tensor]:
        plan = training.plan(*micro_batches(step=number))
        assert len(plan.trained) == 8 and len(training.payloads) <= 8
        drawn_at = plan.trained_ids[plan.reused] // 8 + 1  # ids are counted 8 a step from step 1
        assert all(1 <= number - drawn_at) and all(number - drawn_at <= 2), (number, drawn_at)
        reused_ids.extend(plan.trained_ids[plan.reused].tolist())
        gains = rollout_gains(
            np.ones(len(plan.trained)), [i.action_log_probs for i in plan.trained],
            [i.action_log_probs + 0.01 * (k % 3) for k, i in enumerate(plan.trained)],
            [i.action_mask for i in plan.trained],
        )
        training.scheduler.feedback(plan.trained_ids, gains)
        return [torch.tensor(plan.trained_ids)] + [b.sequences for b in plan.batches]

    reused_ids: list[int] = []
    uninterrupted = make()
    for number in range(1, 4):
        step(uninterrupted, number)
    saved = _roundtrip(uninterrupted.state_dict())
    later = [step(uninterrupted, number) for number in range(4, 7)]
    assert reused_ids, "CBS never reused a buffered rollout"
    figures = set(uninterrupted.scheduler.metrics())
    assert figures >= {"reuse_share", "mean_staleness", "selected_share", "bandit_reward"}

    resumed = make()
    resumed.load_state_dict(saved)
    again = [step(resumed, number) for number in range(4, 7)]
    for a, b in zip(later, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_forward_partitions_cover_every_rollout_and_every_rank():
    from types import SimpleNamespace

    items = split_items(micro_batches(step=1)[0])
    args = SimpleNamespace(
        train=SimpleNamespace(dynamic_batch_enable=False), rollout=SimpleNamespace(micro_batch_size=3)
    )
    assert forward_partitions(items, args, ranks=1) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert forward_partitions(items[:1], args, ranks=2) == [[0], [0]]  # one rollout, two ranks
    dynamic = SimpleNamespace(
        train=SimpleNamespace(dynamic_batch_enable=True),
        rollout=SimpleNamespace(micro_batch_size=3, max_tokens_per_gpu=16),
        ds=SimpleNamespace(ring_attn_size=1, tensor_parallel_size=1),
    )
    parts = forward_partitions(items, dynamic, ranks=2)
    assert sorted(row for part in parts for row in part) == list(range(8)) and len(parts) % 2 == 0
    assert all(sum(int(items[r].total_length) for r in part) <= 16 for part in parts)


def test_openrlhf_balances_the_scheduled_batches_for_dynamic_batching():
    """With --train.dynamic_batch_enable OpenRLHF's train_step re-balances the step's
    batches across ranks (balance_experiences): the scheduled batches must go through it."""
    from types import SimpleNamespace

    from openrlhf.trainer.ppo_utils.experience import balance_experiences

    training = ScheduledTraining(ReplayTestScheduler(keep=2), micro_batch_size=4)
    training.plan(*micro_batches(step=1))
    plan = training.plan(*micro_batches(step=2))
    args = SimpleNamespace(
        actor=SimpleNamespace(num_nodes=1, num_gpus_per_node=2),
        ds=SimpleNamespace(ring_attn_size=1, tensor_parallel_size=1),
    )
    balanced = balance_experiences(plan.batches, args)
    assert sum(len(b.sequences) for b in balanced) == 8
    assert sorted(float(x) for b in balanced for x in b.rewards) == sorted(float(i.rewards) for i in plan.trained)


def test_metrics_doc_lists_exactly_the_scheduler_metrics():
    """docs/metrics.md lists every ``scheduler/`` figure the trainer logs, and nothing else."""
    import re
    from pathlib import Path

    from openrlhf_cero.schedulers import available_schedulers, create_scheduler

    emitted: set[str] = set()
    for name in available_schedulers():
        training = ScheduledTraining(create_scheduler(name, seed=0, warmup_steps=1), micro_batch_size=4)
        for number in range(1, 4):
            plan = training.plan(*micro_batches(step=number))
            training.scheduler.feedback(plan.trained_ids, np.linspace(-1, 1, len(plan.trained_ids)))
            emitted |= set(training.scheduler.metrics())
    text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`scheduler/([a-z0-9_]+)`", text))
    assert emitted - documented == set(), "emitted but not documented"
    assert documented - emitted == set(), "documented but never emitted"


def _read_only(value):
    """A state as Ray delivers it from the object store: numpy arrays not writable."""
    if isinstance(value, np.ndarray):
        value = value.copy()
        value.flags.writeable = False
        return value
    if isinstance(value, dict):
        return {key: _read_only(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_read_only(item) for item in value]
    return value


def test_a_state_with_read_only_arrays_loads_and_trains_on():
    """On resume the checkpoint's state reaches the trainer through Ray (read-only arrays):
    the scheduler must get arrays it may update in place."""
    from openrlhf_cero.schedulers import create_scheduler

    def make() -> ScheduledTraining:
        return ScheduledTraining(create_scheduler("cbs", seed=1, warmup_steps=1), micro_batch_size=4)

    first = make()
    for number in (1, 2):
        plan = first.plan(*micro_batches(step=number))
        first.scheduler.feedback(plan.trained_ids, np.linspace(-1, 1, len(plan.trained_ids)))
    resumed = make()
    resumed.load_state_dict(_read_only(_roundtrip(first.state_dict())))
    assert len(resumed.plan(*micro_batches(step=3)).trained) == 8
