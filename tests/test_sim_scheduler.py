"""The simulator with a rollout scheduler: per-rollout training, PPO's clip, gains, accounting.

- With every drawn rollout trained fresh, the per-rollout rule (sim/rollouts.py) is the
  group rule (sim/signal.py, PromptWorld.train_step) for every estimator, sgd and adam.
- A reused rollout's gradient is the gradient of OpenRLHF's own ``PolicyLoss`` with the
  drawing policy's log-probabilities as old log-probs; outside the clip range on its
  advantage's side it contributes nothing.
- Gains have the sign of the advantage times the change of the rollout's probability.
- The runner with a scheduler counts drawn rollouts only (reuse costs nothing again).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from openrlhf.models import PolicyLoss

from openrlhf_cero.schedulers.base import RolloutScheduler, RolloutTable, Selection
from openrlhf_cero.sim import runner
from openrlhf_cero.sim.rollouts import PPO_CLIP_EPS, clipped_gradient, rollout_advantages, rollout_gains
from openrlhf_cero.sim.runner import run_allocator
from openrlhf_cero.sim.scenario import make_scenario
from openrlhf_cero.sim.scheduled import Payloads, ScheduledTrainer
from openrlhf_cero.sim.signal import ESTIMATORS, group_gradient, whitening_factor
from openrlhf_cero.sim.world import PromptWorld

SMALL = {"dataset_size": 128, "eval_size": 64, "batch_size": 16, "epochs": 4, "clusters": 4}


class ReplayTestScheduler(RolloutScheduler):
    """Trains the first ``1 - hold`` share of the fresh rows and fills the batch from the buffer
    (oldest first), so the first step trains a short batch; keeps every untrained fresh row for
    one step. ``hold=0`` trains every fresh row."""

    name = "replay_test"

    def __init__(self, *, seed: int = 0, hold: float = 0.5) -> None:
        super().__init__(seed=seed)
        self.hold = hold
        self.next_id = 0
        self.buffer = np.zeros(0, dtype=np.int64)
        self.gains: list[np.ndarray] = []
        self.fed: list[np.ndarray] = []

    def select(self, fresh: RolloutTable, train_size: int) -> Selection:
        ids = np.arange(self.next_id, self.next_id + len(fresh), dtype=np.int64)
        self.next_id += len(fresh)
        take = len(fresh) - int(self.hold * len(fresh))
        reused = self.buffer[: max(train_size - take, 0)]
        kept = ids[take:]
        self.buffer = kept
        return Selection(fresh_ids=ids, train_fresh=np.arange(take), train_reused=reused, kept=kept)

    def feedback(self, rollout_ids: np.ndarray, gains: np.ndarray) -> None:
        self.fed.append(np.asarray(rollout_ids))
        self.gains.append(np.asarray(gains))

    def state_dict(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "buffer": self.buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id, self.buffer = state["next_id"], state["buffer"]

    def metrics(self) -> dict[str, float]:
        return {"reuse_share": 0.0, "mean_staleness": 1.0, "selected_share": 1.0 - self.hold, "bandit_reward": 0.0}


def random_step(seed: int, groups: int = 12) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 14, size=groups)
    p = rng.uniform(0.0, 1.0, size=groups)
    p[:2] = (0.0, 1.0)  # zero-variance groups among them
    return sizes, [(rng.random(n) < q).astype(np.float64) for n, q in zip(sizes, p)]


def world_for(estimator: str, optimizer: str = "sgd", **overrides: Any) -> PromptWorld:
    settings = {**SMALL, "signal": estimator, "optimizer": optimizer, "drift_sd": 0.0, **overrides}
    return PromptWorld(make_scenario("quick", settings), seed=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_per_rollout_sum_is_the_group_gradient(estimator):
    for seed in range(5):
        sizes, rewards = random_step(seed)
        flat = np.concatenate(rewards)
        wins = np.array([r.sum() for r in rewards])
        advantage = rollout_advantages(sizes, flat, estimator)
        theta = np.repeat(np.random.default_rng(seed).normal(0, 1.5, sizes.size), sizes)
        per_rollout, clipped = clipped_gradient(theta, theta, flat, advantage, np.ones(flat.size, bool))
        assert not clipped.any()  # fresh rollouts: ratio 1
        summed = np.bincount(np.repeat(np.arange(sizes.size), sizes), weights=per_rollout)
        want = group_gradient(sizes, wins, estimator) * whitening_factor(sizes, wins, estimator)
        np.testing.assert_allclose(summed, want, rtol=1e-10, atol=1e-12)
        assert np.abs(want).max() > 0.1  # not vacuous


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_training_every_rollout_fresh_is_the_group_rule(estimator, optimizer):
    group_rule, scheduled = world_for(estimator, optimizer), world_for(estimator, optimizer)
    trainer = ScheduledTrainer(scheduled, ReplayTestScheduler(hold=0.0))
    for seed in range(3):  # several steps: adam's running second moment too
        sizes, _ = random_step(seed)
        index = np.random.default_rng(seed).choice(group_rule.n_train, size=sizes.size, replace=False)
        rewards = group_rule.draw(index, sizes)
        group_rule.train_step(index, sizes, np.array([r.sum() for r in rewards]))
        figures = trainer.step(index, rewards)
        assert figures.trained == sizes.sum() and figures.reused == 0
        np.testing.assert_allclose(scheduled.theta, group_rule.theta, rtol=0, atol=1e-12)
    assert np.abs(scheduled.theta - world_for(estimator, optimizer).theta).max() > 1e-3


@pytest.mark.parametrize("estimator", ["group_norm", "rloo"])
def test_reused_rollouts_follow_openrlhfs_clipped_policy_loss(estimator):
    """Old log-probs from the drawing policy, autograd through PolicyLoss (token-mean)."""
    rng = np.random.default_rng(3)
    sizes, rewards = random_step(4, groups=16)
    flat = np.concatenate(rewards)
    advantage = rollout_advantages(sizes, flat, estimator)
    theta_now = np.repeat(rng.normal(0.0, 1.0, sizes.size), sizes)
    theta_drew = theta_now + rng.normal(0.0, 0.6, flat.size)  # some ratios far outside 1 +- 0.2
    mine, clipped = clipped_gradient(theta_now, theta_drew, flat, advantage, np.ones(flat.size, bool))
    assert 0 < clipped.sum() < flat.size

    theta = torch.tensor(theta_now, dtype=torch.float64, requires_grad=True)
    r = torch.tensor(flat, dtype=torch.float64)
    logsig = torch.nn.functional.logsigmoid
    log_probs = torch.where(r > 0, logsig(theta), logsig(-theta))
    old = torch.where(r > 0, logsig(torch.tensor(theta_drew)), logsig(-torch.tensor(theta_drew)))
    loss_fn = PolicyLoss(clip_eps_low=PPO_CLIP_EPS, clip_eps_high=PPO_CLIP_EPS, token_level_loss=True)
    mask = torch.ones(flat.size, 1)
    loss = loss_fn(log_probs[:, None], old[:, None], torch.tensor(advantage)[:, None], action_mask=mask)[0]
    loss.backward()
    np.testing.assert_allclose(mine / flat.size, -theta.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_a_reused_rollout_outside_the_clip_range_contributes_nothing():
    theta_drew = np.zeros(4)  # drawn at p = 0.5
    theta_now = np.array([1.0, 1.0, -1.0, -1.0])  # correct answers: ratio 1.46 / 0.54
    reward = np.ones(4)
    advantage = np.array([1.0, -1.0, -1.0, 1.0])
    gradient, clipped = clipped_gradient(theta_now, theta_drew, reward, advantage, np.ones(4, bool))
    # A > 0 past 1 + eps and A < 0 below 1 - eps are cut; the other two still pull back.
    assert clipped.tolist() == [True, False, True, False]
    assert gradient[0] == 0.0 and gradient[2] == 0.0
    assert gradient[1] < 0 and gradient[3] > 0

    # The same through a training step: the only trained rollout is clipped, nothing moves.
    world = world_for("group_norm", lr_cluster=0.0, lr_global=0.0)
    trainer = ScheduledTrainer(world, ReplayTestScheduler(hold=0.5))
    i = int(np.flatnonzero(~world.unsolvable)[0])
    world.theta[i] = 0.0  # drawn at p = 0.5
    trainer.step(np.array([i]), [np.array([1.0, 0.0])])  # trains the correct one, keeps the wrong one
    kept = trainer.buffer
    assert kept.reward.tolist() == [0.0] and kept.advantage[0] < 0
    world.theta[i] = kept.theta_drew[0] + 2.0  # p rose: the wrong answer's ratio < 0.8, with A < 0: clipped
    before = world.theta.copy()
    trainer.scheduler.hold = 1.0  # train no fresh rollout: the batch is the one reused rollout
    figures = trainer.step(np.array([7]), [np.array([1.0])])
    assert figures.reused == 1 and figures.clipped == 1 and figures.trained == 1
    np.testing.assert_array_equal(world.theta, before)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gains_have_the_sign_of_the_advantage_times_the_probability_change(estimator):
    world = world_for(estimator, lr_cluster=0.0, lr_global=0.0, lr_self=0.5)
    scheduler = ReplayTestScheduler(hold=0.4)
    trainer = ScheduledTrainer(world, scheduler)
    checked = 0
    for seed in range(4):
        sizes, _ = random_step(seed)
        index = np.random.default_rng(seed).choice(world.n_train, size=sizes.size, replace=False)
        rewards = world.draw(index, sizes)
        before = world.pass_rates.copy()
        fresh, _ = trainer.fresh_payloads(index, rewards, scheduler.next_id + np.arange(int(sizes.sum())))
        drawn = Payloads.concat(trainer.buffer, fresh)
        trainer.step(index, rewards)
        ids, gains = scheduler.fed[-1], scheduler.gains[-1]
        assert ids.size == gains.size > 0
        rows = drawn.rows(ids)
        prompt, reward, advantage = drawn.prompt[rows], drawn.reward[rows], drawn.advantage[rows]
        dp = world.pass_rates[prompt] - before[prompt]  # no drift, no transfer: the update's own change
        change = np.where(reward > 0, dp, -dp)  # of pi(y): p for a correct answer, 1 - p for a wrong one
        live = (np.abs(gains) > 1e-15) & (np.abs(change) > 1e-12)
        np.testing.assert_array_equal(np.sign(gains[live]), np.sign(advantage[live] * change[live]))
        checked += int(live.sum())
        # exactly A * (log pi_after - log pi_before)
        after_logp = np.log(np.where(reward > 0, world.pass_rates[prompt], 1 - world.pass_rates[prompt]))
        before_logp = np.log(np.where(reward > 0, before[prompt], 1 - before[prompt]))
        np.testing.assert_allclose(gains, advantage * (after_logp - before_logp), rtol=1e-6, atol=1e-12)
    assert checked > 50
    assert rollout_gains(np.zeros(1), np.ones(1), np.ones(1), np.ones(1), np.ones(1, bool))[0] > 0


def test_runner_counts_drawn_rollouts_only(monkeypatch):
    scenario = make_scenario("quick", SMALL)
    made: list[ReplayTestScheduler] = []

    def build(name, **settings):
        made.append(ReplayTestScheduler(seed=settings["seed"], hold=0.5))
        return made[-1]

    monkeypatch.setattr(runner, "create_scheduler", build)
    plain = run_allocator(scenario, "uniform", seed=1)
    record = run_allocator(scenario, "uniform", seed=1, scheduler="replay_test")
    assert record.allocator == "uniform+replay_test"
    np.testing.assert_array_equal(record.cum_rollouts, plain.cum_rollouts)  # reuse is not a draw
    assert record.cum_rollouts[-1] == record.extra["world_rollouts_drawn"]
    reused = record.extra["scheduler"]["reused"]
    assert reused.size == record.steps and reused[0] == 0 and reused[1:].min() > 0  # every later step reuses
    assert (record.rollouts_trained[2:] == scenario.step_budget).all()  # train_size = the fresh count
    # each drawn rollout in a mixed group is counted once as effective, when it first trains
    assert record.rollouts_mixed.sum() <= record.cum_rollouts[-1]
    assert not np.array_equal(record.train_pass_rate, plain.train_pass_rate)
    # with everything trained fresh, a scheduled run is the unscheduled one
    monkeypatch.setattr(runner, "create_scheduler", lambda name, **s: ReplayTestScheduler(seed=s["seed"], hold=0.0))
    same = run_allocator(scenario, "uniform", seed=1, scheduler={"name": "replay_test"})
    np.testing.assert_allclose(same.train_pass_rate, plain.train_pass_rate, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(same.rollouts_mixed, plain.rollouts_mixed)


def test_runner_with_cbs_runs_and_counts_rollouts():
    pytest.importorskip("openrlhf_cero.schedulers.cbs")
    scenario = make_scenario("quick", {**SMALL, "epochs": 2})
    plain = run_allocator(scenario, "uniform", seed=0)
    cheap = {"train_steps": 2, "hidden": 8}  # the scorer's cost is not what this checks
    record = run_allocator(scenario, "uniform", seed=0, scheduler={"name": "cbs", "buffer_size": 256, **cheap})
    np.testing.assert_array_equal(record.cum_rollouts, plain.cum_rollouts)
    assert record.cum_rollouts[-1] == record.extra["world_rollouts_drawn"] == scenario.total_rollouts
    assert (record.rollouts_trained[1:] == scenario.step_budget).all()
    metrics = record.extra["scheduler"]
    for key in ("reuse_share", "mean_staleness", "selected_share", "bandit_reward", "reused"):
        assert metrics[key].size == record.steps
    assert np.isfinite(record.train_pass_rate).all()


def test_bench_entries_with_a_scheduler(tmp_path, capsys):
    pytest.importorskip("openrlhf_cero.schedulers.cbs")
    from openrlhf_cero.cli import bench

    tiny = '{"dataset_size": 64, "eval_size": 32, "batch_size": 8, "epochs": 2, "clusters": 4}'
    argv = ["--allocators", "uniform,uniform+cbs", "--quick", "--scenario-overrides", tiny, "--seeds", "1",
            "--scheduler-options", '{"cbs": {"buffer_size": 64, "train_steps": 1, "hidden": 4}}',
            "--out", str(tmp_path), "--no-plots", "--no-progress", "--jobs", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| uniform |" in out and "| uniform+cbs |" in out
    assert bench.split_entry("cero+cbs") == ("cero", "cbs") and bench.split_entry("cero") == ("cero", None)
    assert bench.main([argv[0], "uniform,uniform+nope", *argv[2:]]) == 2
    assert "unknown --rollout_scheduler 'nope'" in capsys.readouterr().err
    bad = ["--scheduler-options", '{"cbs": {"bufer_size": 4}}']
    assert bench.main([*argv[:7], *bad, *argv[9:]]) == 2
    assert "bufer_size" in capsys.readouterr().err
