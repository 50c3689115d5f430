"""End to end: ``--rollout_scheduler cbs`` in the real OpenRLHF 0.11.2 trainer on CPU.

Same set-up as tests/test_e2e_cpu.py (whose helpers are loaded from that file): real Ray,
DeepSpeed ZeRO-2, OpenRLHF's trainer and actors, the tiny model, the stand-in engine.
The scheduler chooses each step's training rollouts from the fresh ones and its buffer
(``warmup_steps 1`` and a reuse share of a half, so that reuse happens within 4 steps),
saves its network, optimiser and buffered rollouts in the checkpoint, and a run killed
after its step-2 checkpoint resumes exactly. About a minute per run on 2 cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("e2e_cpu_helpers", Path(__file__).with_name("test_e2e_cpu.py"))
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)
assets = e2e.assets  # the module-scoped fixture: the tiny model, tokenizer, prompts, reward

pytestmark = pytest.mark.e2e

SCHEDULER = ["--rollout_scheduler", "cbs", "--scheduler.cbs.warmup_steps", "1",
             "--scheduler.cbs.max_reuse_share", "0.5", "--scheduler.cbs.max_staleness", "2"]
FOUR_STEPS = {"data.max_samples": 8, "train.num_episodes": 2}  # 4 prompts a step, 2 steps an epoch
METRICS = ("scheduler/reuse_share", "scheduler/mean_staleness", "scheduler/selected_share", "scheduler/bandit_reward")


def saved_states(ckpt: Path, step: int) -> dict:
    path = ckpt / "_actor" / f"global_step{step}" / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)


def assert_scheduler_trained(logged: dict, steps: list[int]) -> None:
    """Every step keeps OpenRLHF's batch (16 fresh rollouts generated; 16 trained), logs the
    scheduler's figures, and some step after the warm-up trains buffered rollouts."""
    assert sorted(logged["rollout/num_samples"]) == steps
    assert all(value == 16.0 for value in logged["rollout/num_samples"].values())
    for name in METRICS:
        assert sorted(logged[name]) == steps, name
    assert logged["scheduler/reuse_share"][steps[0]] == 0.0 or steps[0] > 1  # warm-up: fresh only
    assert max(logged["scheduler/reuse_share"].values()) > 0.0, "no step reused a buffered rollout"
    assert all(0.0 <= v <= 0.5 for v in logged["scheduler/reuse_share"].values())
    assert all(0.0 <= v <= 2.0 for v in logged["scheduler/mean_staleness"].values())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cbs_with_cero_trains_and_resumes(assets, tmp_path, mode):
    """CERO allocates, CBS schedules: both states in the checkpoint; a run killed after
    its step-2 checkpoint resumes with the scheduler's network, optimiser and buffer. With
    the sync trainer steps 3 and 4 equal the uninterrupted run's, every logged figure bit
    for bit (scheduler figures included). The async trainer overlaps generation with
    training, which no seed makes repeatable (test_e2e_cpu.py), so there the resumed run is
    checked for continuity: the scheduler counts on from the checkpoint's steps and ids."""
    extra = ["--rollout_allocator", "cero", *SCHEDULER] + (["--train.async_enable"] if mode == "async" else [])
    first = e2e.train(assets, tmp_path / "first", *extra, **FOUR_STEPS)
    assert_scheduler_trained(first, [1, 2, 3, 4])
    saved = saved_states(tmp_path / "first" / "ckpt", 2)
    scheduler = saved["rollout_scheduler"]
    assert scheduler["scheduler"] == "cbs" and scheduler["state"]["steps"] == 2
    assert set(scheduler["payloads"]) == {int(i) for i in scheduler["state"]["buffer"]["id"]}
    assert scheduler["payloads"], "the step-2 checkpoint holds no buffered rollout"
    assert "rollout_allocator" in saved["data_loader_state_dict"]

    e2e.leave_checkpoint_of_killed_run(tmp_path / "first", 2, tmp_path / "resumed")
    resumed = e2e.train(assets, tmp_path / "resumed", *extra, "--ckpt.load_enable", **FOUR_STEPS)
    assert sorted(resumed["rollout/num_samples"]) == [3, 4]
    final = saved_states(tmp_path / "resumed" / "ckpt", 4)["rollout_scheduler"]["state"]
    assert final["steps"] == 4 and final["next_id"] == 4 * 16
    if mode == "sync":
        e2e.assert_same_figures(resumed, first, steps=(3, 4))
        for name in METRICS:
            assert resumed[name] == {s: first[name][s] for s in (3, 4)}, name


@pytest.mark.parametrize(
    "allocator, data",
    [
        # The hybrid engine, as the GPU recipes run: models colocated, engine and DeepSpeed
        # asleep between phases (the scheduler's extra forwards run while the engine sleeps).
        ("uniform", {"data.max_samples": 12, "train.colocate_all": True, "vllm.enable_sleep": True,
                     "ds.enable_sleep": True}),
        ("vip", {"data.max_samples": 12}),
        # Pilot-Commit pilots more prompts than it trains: more data, two epochs.
        ("pilot_commit", {"data.max_samples": 16, "train.num_episodes": 2}),
    ],
)
def test_cbs_combines_with_every_allocator(assets, tmp_path, allocator, data):
    """Each other allocator with the scheduler: every step trains what the allocator
    drew for it (OpenRLHF's batch holds), the figures of both are logged, and the
    scheduler reuses after its warm-up step."""
    logged = e2e.train(assets, tmp_path, "--rollout_allocator", allocator, *SCHEDULER, **data)
    steps = sorted(logged["rollout/num_samples"])
    assert len(steps) >= 3
    assert logged["rollout/num_samples"] == logged["allocator/rollouts_trained"]
    for name in METRICS:
        assert sorted(logged[name]) == steps, name
    assert max(logged["scheduler/reuse_share"].values()) > 0.0, "no step reused a buffered rollout"
