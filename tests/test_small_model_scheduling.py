"""The small-model benchmark's PPO update and its rollout-scheduler plumbing
(benchmarks/small_model/scheduling.py): the clipped loss equals the old policy-gradient loss on
fresh rollouts, clipping removes a far off-policy rollout's gradient, and a run with a scheduler
trains the selection, keeps the drawing policy's log-probs for reuse, counts only drawn
rollouts and records the scheduler's figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.small_model import scheduling  # noqa: E402
from benchmarks.small_model.config import SMOKE, Config  # noqa: E402
from benchmarks.small_model.grpo import group_norm_advantages, policy_gradient_loss, run_allocator  # noqa: E402
from benchmarks.small_model.model import TinyDecoder, completion_logprobs, generate  # noqa: E402
from benchmarks.small_model.task import build_datasets, make_prompt_set  # noqa: E402
from benchmarks.small_model.warmup import build_model  # noqa: E402
from openrlhf_cero.schedulers import RolloutScheduler, RolloutTable, Selection  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _batch(seed: int = 0, rows: int = 16) -> tuple[TinyDecoder, Any, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyDecoder(32, 1, 2)
    data = make_prompt_set(["12+34=", "7*8=", "123+45=", "31*2="] * (rows // 4))
    completions = generate(model, data.tokens, data.mask, greedy=False, generator=torch.Generator().manual_seed(seed))
    rewards = np.tile([1.0, 0.0, 0.0, 1.0], rows // 4)
    adv = torch.as_tensor(group_norm_advantages(rewards, np.array([rows // 2, rows // 2])), dtype=torch.float32)
    return model, data, completions, adv


def _grads(model: TinyDecoder) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def test_ppo_loss_on_fresh_rollouts_has_the_policy_gradient_losss_gradient_bit_for_bit():
    """Fresh rollouts: old log-probs are the current ones, the ratio is 1, and the gradient is the
    plain policy gradient's exactly, so runs without a scheduler do not change."""
    model, data, completions, adv = _batch()
    logp, counted = completion_logprobs(model, data.tokens, data.mask, completions)
    model.zero_grad()
    policy_gradient_loss(logp, counted, adv).backward()
    want = _grads(model)
    logp, counted = completion_logprobs(model, data.tokens, data.mask, completions)
    model.zero_grad()
    scheduling.ppo_clip_loss(logp, logp.detach(), counted, adv).backward()
    got = _grads(model)
    assert any(float(w.abs().sum()) > 0 for w in want)
    for w, g in zip(want, got):
        assert torch.equal(w, g)


def test_clipped_update_without_reuse_takes_the_policy_gradient_step():
    """The update the benchmark runs (AdamW, clip_grad_norm) lands on the same parameters with PPO's
    loss as with the policy-gradient loss it replaced."""
    states = []
    for use_ppo in (False, True):
        model, data, completions, adv = _batch(seed=3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        rows = torch.arange(len(data.texts))
        if use_ppo:
            scheduling.clipped_update(model, opt, data, rows, completions, adv, None, 1.0)
        else:
            logp, counted = completion_logprobs(model, data.tokens, data.mask, completions)
            opt.zero_grad()
            policy_gradient_loss(logp, counted, adv).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        states.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*states):
        assert torch.equal(a, b)


@pytest.mark.parametrize("log_ratio,advantage,moves", [
    (np.log(2.0), 1.0, False),   # ratio 2 > 1.2 with A > 0: clipped, no gradient
    (np.log(0.5), -1.0, False),  # ratio 0.5 < 0.8 with A < 0: clipped, no gradient
    (np.log(1.1), 1.0, True),    # inside the clip range: the ratio's gradient
    (np.log(0.5), 1.0, True),    # ratio below the range with A > 0: PPO keeps the (pessimistic) gradient
])
def test_a_reused_rollout_outside_the_clip_range_contributes_no_gradient(log_ratio, advantage, moves):
    model, data, completions, _ = _batch(rows=4)
    logp, counted = completion_logprobs(model, data.tokens, data.mask, completions)
    old = logp.detach() - float(log_ratio)  # exp(logp - old) = the ratio, on every token
    adv = torch.tensor([advantage, 0.0, 0.0, 0.0])  # only row 0 carries an advantage
    model.zero_grad()
    scheduling.ppo_clip_loss(logp, old, counted, adv).backward()
    norm = sum(float(g.abs().sum()) for g in _grads(model))
    assert (norm > 1e-8) == moves


def test_split_entry_names_allocator_and_scheduler():
    assert scheduling.split_entry("cero+cbs") == ("cero", "cbs")
    assert scheduling.split_entry("uniform") == ("uniform", None)


class _ReplayHalf(RolloutScheduler):
    """A test double of the contract: trains the first half of the fresh rows and fills the rest
    from the buffer (oldest first; all fresh rows while the buffer is short), keeps every fresh
    rollout, trained or not, up to ``buffer_size`` (newest), drops any older than
    ``max_staleness``; gains are recorded for inspection."""

    name = "replay_half"

    def __init__(self, *, seed: int = 0, buffer_size: int = 64, max_staleness: int = 2) -> None:
        super().__init__(seed=seed)
        self.buffer_size, self.max_staleness = buffer_size, max_staleness
        self.next_id, self.buffer, self.steps, self.trained, self.gains = 0, {}, 0, [], []
        self.last: dict[str, float] = {}

    def select(self, fresh: RolloutTable, train_size: int) -> Selection:
        self.steps += 1
        ids = np.arange(self.next_id, self.next_id + len(fresh), dtype=np.int64)
        self.next_id += len(fresh)
        alive = sorted(i for i, born in self.buffer.items() if self.steps - born <= self.max_staleness)
        take_fresh = np.arange(max(train_size - len(alive), (train_size + 1) // 2), dtype=np.int64)
        reused = np.array(alive[: train_size - len(take_fresh)], dtype=np.int64)
        self.buffer = {i: b for i, b in self.buffer.items() if i in alive and i not in set(reused.tolist())}
        self.buffer.update({int(i): self.steps for i in ids})
        kept = np.array(sorted(self.buffer)[-self.buffer_size:], dtype=np.int64)
        self.buffer = {int(i): self.buffer[int(i)] for i in kept}
        staleness = [self.steps - self.buffer.get(int(i), self.steps - 1) for i in reused]
        self.last = {"reuse_share": len(reused) / max(1, train_size), "mean_staleness": float(np.mean(staleness or [0])),
                     "selected_share": len(take_fresh) / max(1, len(fresh)), "bandit_reward": 0.0}
        return Selection(ids, take_fresh, reused, kept)

    def feedback(self, rollout_ids: np.ndarray, gains: np.ndarray) -> None:
        self.trained.append(np.asarray(rollout_ids))
        self.gains.append(np.asarray(gains))
        self.last["bandit_reward"] = float(np.mean(gains)) if len(gains) else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return dict(self.last)


def test_a_run_with_a_scheduler_trains_its_selection_and_counts_only_drawn_rollouts(monkeypatch):
    made: list[_ReplayHalf] = []

    def fake(name: str, seed: int, options: dict) -> RolloutScheduler:
        made.append(_ReplayHalf(seed=seed, **options.get(name, {})))
        return made[-1]

    monkeypatch.setattr("benchmarks.small_model.grpo.build_scheduler", fake)
    cfg = Config(**{**SMOKE, "total_rollouts": 128, "eval_every": 64, "batch_prompts": 4, "n": 8,
                    "scheduler_options": {"replay_half": {"buffer_size": 48}}})
    torch.manual_seed(0)
    state = build_model(cfg, torch.device("cpu")).state_dict()
    record = run_allocator(cfg, "uniform+replay_half", 0, state)
    steps = record["steps"]
    assert record["done"] and record["allocator"] == "uniform+replay_half" and len(steps) == 4
    assert record["evals"][-1]["rollouts"] == sum(s["drawn"] for s in steps) == 128  # reused ones are no draws
    for k, s in enumerate(steps):
        assert s["drawn"] == 32 and s["trained"] == 32 == s["trained_fresh"] + s["trained_reused"]
        assert s["trained_reused"] == (0 if k == 0 else 16)
        assert s["buffered"] <= 48
        assert {"scheduler_reuse_share", "scheduler_mean_staleness", "scheduler_selected_share",
                "scheduler_bandit_reward", "scheduler_seconds", "gain_seconds"} <= set(s)
    sched = made[0]
    assert [len(t) for t in sched.trained] == [32] * 4 and all(np.isfinite(g).all() for g in sched.gains)


def test_buffered_payloads_keep_the_drawing_policys_log_probs_and_gains_are_the_surrogate_change():
    """Two steps: after each, every kept rollout's payload holds the log-probs of the policy that
    drew it (the step-1 policy for rollouts carried over, not the updated one), fresh trained or
    not; the reported gains are advantage x token-mean log-prob change over the update."""
    torch.manual_seed(0)
    train, _ = build_datasets(0, 40, 10)
    model = TinyDecoder(32, 1, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = _ReplayHalf(buffer_size=48)
    trainer = scheduling.ScheduledTraining(sched)
    rewards = np.tile([1.0, 0.0, 1.0, 0.0], 8)
    adv = group_norm_advantages(rewards, np.full(8, 4))
    drew_by_id, completion_by_id = {}, {}
    for step in range(2):
        rows = torch.arange(8 * step, 8 * step + 8).repeat_interleave(4)
        completions = generate(model, train.tokens[rows], train.mask[rows], greedy=False,
                               generator=torch.Generator().manual_seed(step))
        with torch.no_grad():
            drew, counted = completion_logprobs(model, train.tokens[rows], train.mask[rows], completions)
        for k in range(32):
            drew_by_id[32 * step + k], completion_by_id[32 * step + k] = drew[k], completions[k]
        _, figures = trainer.update(model, opt, train, train.ids[rows.numpy()], np.repeat(np.arange(8), 4), rewards,
                                    adv, rows, completions, 1.0)
        fresh = 32 if step == 0 else 16
        assert figures["trained_fresh"] == fresh and figures["trained_reused"] == 32 - fresh
        with torch.no_grad():
            after, _ = completion_logprobs(model, train.tokens[rows[:fresh]], train.mask[rows[:fresh]],
                                           completions[:fresh])
        want = adv[:fresh] * ((after - drew[:fresh]) * counted[:fresh]).sum(1).numpy() / counted[:fresh].sum(1).numpy()
        np.testing.assert_allclose(sched.gains[step][:fresh], want, rtol=1e-4, atol=1e-7)
    # Step 2 reused ids 0-15 and kept 16-31 (drawn in step 1) and 32-63 (fresh, half of them trained).
    assert set(trainer.payloads) == set(range(16, 64))
    for rid, payload in trainer.payloads.items():
        assert torch.equal(payload.completion, completion_by_id[rid])
        torch.testing.assert_close(payload.old_logp, drew_by_id[rid], rtol=0, atol=1e-6)
        assert payload.advantage == adv[rid % 32]
    with torch.no_grad():  # the carried-over rollouts' log-probs are the step-1 policy's, not today's
        now, _ = completion_logprobs(model, train.tokens[torch.arange(4, 8).repeat_interleave(4)],
                                     train.mask[torch.arange(4, 8).repeat_interleave(4)],
                                     torch.stack([completion_by_id[i] for i in range(16, 32)]))
    assert not torch.allclose(now, torch.stack([trainer.payloads[i].old_logp for i in range(16, 32)]), atol=1e-4)


def test_a_tiny_run_with_cbs_counts_drawn_rollouts_and_records_the_schedulers_figures():
    cfg = Config(**{**SMOKE, "total_rollouts": 160, "eval_every": 64, "batch_prompts": 4, "n": 8,
                    "scheduler_options": {"cbs": {"buffer_size": 64, "warmup_steps": 1}}})
    torch.manual_seed(0)
    state = build_model(cfg, torch.device("cpu")).state_dict()
    record = run_allocator(cfg, "cero+cbs", 0, state)
    steps = record["steps"]
    assert record["done"] and record["allocator"] == "cero+cbs"
    assert record["scheduler"]["name"] == "cbs" and record["scheduler"]["buffer_size"] == 64
    assert record["evals"][-1]["rollouts"] == sum(s["drawn"] for s in steps) >= cfg.total_rollouts
    for s in steps:
        assert s["trained"] == s["trained_fresh"] + s["trained_reused"] and s["buffered"] <= 64
        assert 0.0 <= s["scheduler_reuse_share"] <= 0.25 + 1e-9  # cbs's default max_reuse_share
        assert s["scheduler_mean_staleness"] <= 4 and np.isfinite(s["scheduler_bandit_reward"])
        assert {"scheduler_selected_share", "scheduler_seconds", "gain_seconds", "step_seconds"} <= set(s)


def _run(name: str, seed: int, x: np.ndarray, y: np.ndarray, **step: float) -> dict:
    evals = [{"rollouts": float(a), "step": i, "held_out": float(b), "train": float(b)} for i, (a, b) in enumerate(zip(x, y))]
    steps = [{"zero_variance_share": 0.5, "mixed_rollouts": 1, "drawn": 2, "allocator_seconds": 0.001, **step}]
    return {"allocator": name, "seed": seed, "evals": evals, "steps": steps, "wall_seconds": 1.0,
            "optimizer_steps": len(x) - 1}


def test_scheduler_entries_are_paired_with_uniform_and_with_their_allocator_alone():
    from benchmarks.small_model.report_scheduler import scheduler_report, scheduler_summary

    x = np.linspace(0, 1000, 21)
    main, scheduled = {"runs": {}}, {"runs": {}}
    timing = {"step_seconds": 0.5, "draw_seconds": 0.1, "update_seconds": 0.3, "scheduler_seconds": 0.05,
              "gain_seconds": 0.05, "trained_fresh": 192, "trained_reused": 64, "scheduler_reuse_share": 0.25,
              "scheduler_mean_staleness": 0.6, "scheduler_selected_share": 0.75, "reused_clipped_token_share": 0.1,
              "mean_gain": 0.002}
    for seed in range(4):
        base = 0.2 + 0.2 * (1 - np.exp(-x / 300)) + 0.005 * seed
        main["runs"][f"uniform/{seed}"] = _run("uniform", seed, x, base)
        main["runs"][f"cero/{seed}"] = _run("cero", seed, x, base - 0.01)
        scheduled["runs"][f"cero+cbs/{seed}"] = _run("cero+cbs", seed, x, base - 0.01 + 0.02 + 0.001 * seed, **timing)
    row = scheduler_summary(main, scheduled, "train")["entries"]["cero+cbs"]
    assert row["base"] == "cero" and row["base_pairs"] == 4
    assert row["final_diff_base"][0] == pytest.approx(0.02 + 0.0015) and row["final_diff"][0] == pytest.approx(0.0115)
    assert row["final_diff_base"][1] > 0  # every seed is ahead of cero alone: the interval excludes 0
    text = scheduler_report(main, scheduled)
    assert "| cero+cbs | 4 |" in text and "| 500 [500, 500] | 100 [100, 100] | 200 [200, 200] | 50.0 [50.0, 50.0]" in text
    assert "| 400 [400, 400] | 1.25 [1.25, 1.25] |" in text  # 500 ms with, 400 without its parts
