"""GRPO with a rollout allocator: advantages, loss, and one training run through ``run_step``.

Each step draws rollouts through :func:`openrlhf_cero.allocators.step_loop.run_step` (the
loop the OpenRLHF generator runs), so pilots, skipped prompts, refills and dynamic filtering
happen exactly as in training and every rollout drawn is counted. ``draw`` samples from the
current policy in one batch and scores exactly. Advantages are OpenRLHF's group_norm per group
of its own size; the loss is OpenRLHF's PPO clipped surrogate, token-mean, one optimizer step
per step's batch, no KL, no critic. Without a scheduler every rollout is fresh, so the ratio is
1 and the gradient is the plain policy gradient's; an entry ``ALLOCATOR+SCHEDULER`` trains on
what the scheduler selects, buffered rollouts of earlier steps included (:mod:`.scheduling`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from benchmarks.small_model.config import Config
from benchmarks.small_model.model import TinyDecoder, greedy_accuracy, pass_rates, sample_in_chunks
from benchmarks.small_model.scheduling import (
    ScheduledTraining, build_scheduler, clipped_update, scheduler_settings, split_entry,
)
from benchmarks.small_model.task import PromptSet, rl_datasets
from benchmarks.small_model.warmup import build_model
from openrlhf_cero.allocators import create_allocator
from openrlhf_cero.allocators.base import AllocatorError, RolloutAllocator
from openrlhf_cero.allocators.step_loop import run_step

# Refill cycles per step before the step loop falls back (as the simulator's runner): an
# allocator that skips every prompt would otherwise loop over the endless epoch stream.
MAX_CYCLES = 1000


def group_norm_advantages(rewards: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """OpenRLHF's group_norm, (r - group mean) / (unbiased group std + 1e-9), for groups of
    any size laid out one after another; groups of one get 0 (no baseline exists)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.sum() != rewards.size:
        raise ValueError(f"group sizes sum to {sizes.sum()} but there are {rewards.size} rewards")
    if not rewards.size:
        return rewards
    starts = np.cumsum(sizes) - sizes
    nonempty = sizes > 0
    sums = np.add.reduceat(rewards, starts[nonempty])
    means = np.repeat(sums / sizes[nonempty], sizes[nonempty])
    squares = np.add.reduceat((rewards - means) ** 2, starts[nonempty])
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(squares / (sizes[nonempty] - 1))
    std = np.repeat(std, sizes[nonempty])
    single = np.repeat(sizes[nonempty] == 1, sizes[nonempty])
    return np.where(single, 0.0, (rewards - means) / (np.where(single, 1.0, std) + 1e-9))


def policy_gradient_loss(logp: torch.Tensor, counted: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Token-mean REINFORCE with the sequence's advantage on each of its tokens: the loss before
    PPO's clipped surrogate replaced it, kept as the reference that loss equals on fresh rollouts."""
    return -(advantages[:, None] * logp).sum() / counted.sum().clamp(min=1)


class EpochStream:
    """The dataloader: the train set shuffled each epoch, epochs back to back. The same seed
    gives every allocator the same prompt order, which pairs runs across allocators."""

    def __init__(self, size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.order = self.rng.permutation(size)
        self.position = 0
        self.epoch = 0

    def take(self, k: int) -> np.ndarray:
        taken = []
        while k > 0:
            if self.position == self.size:
                self.order, self.position, self.epoch = self.rng.permutation(self.size), 0, self.epoch + 1
            chunk = self.order[self.position : self.position + k]
            self.position += chunk.size
            k -= chunk.size
            taken.append(chunk)
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)


class RolloutDrawer:
    """``draw`` for run_step: every requested rollout of a round sampled in one batch.

    A sample is its row number in this step's buffer; the completions stay on the device
    until the update gathers the kept rows."""

    def __init__(self, model: TinyDecoder, train: PromptSet, generator: torch.Generator) -> None:
        self.model, self.train, self.generator = model, train, generator
        self.prompt_rows: list[torch.Tensor] = []
        self.completions: list[torch.Tensor] = []
        self.rows = 0
        self.seconds = 0.0

    def __call__(self, handles: Sequence[int], counts: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        start = time.perf_counter()
        counts = np.asarray(counts, dtype=np.int64)
        index = torch.as_tensor(np.repeat(np.asarray(handles, dtype=np.int64), counts), device=self.train.tokens.device)
        self.model.eval()
        completions, rewards = sample_in_chunks(self.model, self.train, index, greedy=False, generator=self.generator)
        self.model.train()
        self.prompt_rows.append(index)
        self.completions.append(completions)
        rewards_np = rewards.cpu().numpy().astype(np.float64)
        rows = np.arange(self.rows, self.rows + index.numel())
        self.rows += index.numel()
        edges = np.cumsum(counts)[:-1]
        out = [(r.tolist(), w) for r, w in zip(np.split(rows, edges), np.split(rewards_np, edges))]
        self.seconds += time.perf_counter() - start
        return out

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_rows = torch.cat(self.prompt_rows)
        completions = torch.cat(self.completions)
        picked = torch.as_tensor(rows, dtype=torch.long, device=completions.device)
        return prompt_rows[picked], completions[picked]


def grpo_update(
    model: TinyDecoder, opt: torch.optim.Optimizer, train: PromptSet, drawer: RolloutDrawer, groups: Sequence[Any],
    grad_clip: float, scheduled: ScheduledTraining | None = None,
) -> tuple[float, dict[str, float]]:
    """One optimizer step: group_norm advantages over each whole drawn group, PPO's token-mean
    loss on every drawn rollout, or on the scheduler's selection when ``scheduled`` is given.
    Returns the loss and the scheduler's figures (none without one)."""
    rows = np.concatenate([np.asarray(g.samples, dtype=np.int64) for g in groups])
    rewards = np.concatenate([g.rewards for g in groups])
    sizes = np.array([len(g.samples) for g in groups], dtype=np.int64)
    advantages = group_norm_advantages(rewards, sizes)
    prompt_rows, completions = drawer.gather(rows)
    if scheduled is not None:
        prompt_ids = np.repeat(np.array([g.prompt_id for g in groups], dtype=np.uint64), sizes)
        group = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        return scheduled.update(model, opt, train, prompt_ids, group, rewards, advantages, prompt_rows, completions,
                                grad_clip)
    adv = torch.as_tensor(advantages, dtype=torch.float32, device=train.tokens.device)
    return clipped_update(model, opt, train, prompt_rows, completions, adv, None, grad_clip)[0], {}


def build_allocator(cfg: Config, name: str, seed: int) -> RolloutAllocator:
    """A registered allocator or one of the simulator's baselines, with the run's bounds."""
    from openrlhf_cero.sim.baselines import BASELINES

    settings: dict[str, Any] = dict(
        n_samples_per_prompt=cfg.n, min_samples=cfg.min_samples, max_samples=cfg.max_samples, seed=seed,
        advantage_estimator="group_norm", **cfg.allocator_options.get(name, {}),
    )
    if name in BASELINES:
        return BASELINES[name](**settings)
    return create_allocator(name, **settings)


def resolved_settings(allocator: RolloutAllocator) -> dict[str, Any]:
    """The options the allocator actually runs with (defaults resolved), JSON-safe: its saved
    settings, plus each declared option it keeps as an attribute (the baselines save none)."""
    settings = dict(allocator.state_dict()["settings"])
    for spec in getattr(allocator, "options", ()):
        if spec.name not in settings and hasattr(allocator, spec.name):
            settings[spec.name] = getattr(allocator, spec.name)
    return json.loads(json.dumps(settings, default=str))


def write_json(path: Path, payload: Any) -> None:
    """Atomic write: a reader (or a kill) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def run_allocator(
    cfg: Config, name: str, seed: int, state: Mapping[str, torch.Tensor], progress_path: Path | None = None
) -> dict[str, Any]:
    """GRPO from the warm-up checkpoint until ``total_rollouts`` rollouts are drawn; ``name`` is an
    allocator, or ``ALLOCATOR+SCHEDULER`` (e.g. ``cero+cbs``) to train on a scheduler's selection.

    Rollouts are counted as drawn: a reused rollout is no new draw. The record holds greedy accuracies (train and held-out) against rollouts drawn and against
    optimizer steps, and per-step figures: rollouts drawn and trained, groups, mixed groups."""
    device = torch.device(cfg.device)
    train, held_out = (s.to(device) for s in rl_datasets(
        cfg.data_seed, cfg.train_size, cfg.eval_size, cfg.buckets, cfg.rl_buckets, cfg.rl_train_size))
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    model = build_model(cfg, device)
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    allocator_name, scheduler_name = split_entry(name)
    allocator = build_allocator(cfg, allocator_name, seed)
    scheduled = (ScheduledTraining(build_scheduler(scheduler_name, seed, cfg.scheduler_options))
                 if scheduler_name else None)
    accept = getattr(allocator, "accept_group", None)
    max_cycles = getattr(allocator, "max_cycles", None) or MAX_CYCLES
    stream = EpochStream(len(train.texts), seed)
    observe = getattr(allocator, "observe_prompts", None)

    def take_prompts(k: int) -> tuple[np.ndarray, list[int]]:
        index = stream.take(k)
        if observe is not None:
            observe(train.ids[index], [train.texts[i] for i in index])
        return train.ids[index], index.tolist()

    record: dict[str, Any] = {"allocator": name, "seed": seed, "settings": resolved_settings(allocator),
                              "evals": [], "steps": [], "done": False}
    if scheduled is not None:
        record["scheduler"] = scheduler_settings(scheduled.scheduler)
    start = time.time()

    def evaluate(cum: int, step: int) -> None:
        point = {"rollouts": cum, "step": step, "held_out": greedy_accuracy(model, held_out),
                 "train": greedy_accuracy(model, train)}
        if cfg.eval_samples:  # sampled accuracy (mean pass rate at temperature 1), RLVR's avg@k
            eval_generator = torch.Generator(device).manual_seed(10_000 + len(record["evals"]))
            point["train_sampled"] = float(pass_rates(model, train, cfg.eval_samples, eval_generator).mean())
            point["held_out_sampled"] = float(pass_rates(model, held_out, cfg.eval_samples, eval_generator).mean())
        point["seconds"] = round(time.time() - start, 2)
        record["evals"].append(point)
        record["wall_seconds"] = time.time() - start
        if progress_path is not None:
            write_json(progress_path, record)

    cum, step, next_eval = 0, 0, cfg.eval_every
    evaluate(0, 0)
    while cum < cfg.total_rollouts:
        if cfg.deadline and time.time() > cfg.deadline:
            record["stopped_by_deadline"] = True
            break
        step_start = time.perf_counter()
        drawer = RolloutDrawer(model, train, generator)
        try:
            outcome = run_step(allocator, cfg.n * cfg.batch_prompts, take_prompts, drawer,
                               accept=accept, max_cycles=max_cycles)
        except AllocatorError as exc:
            record["error"] = str(exc)
            break
        update_start = time.perf_counter()
        loss, figures = (grpo_update(model, opt, train, drawer, outcome.groups, cfg.grad_clip, scheduled)
                         if outcome.groups else (0.0, {}))
        update_seconds = time.perf_counter() - update_start
        step += 1 if outcome.groups else 0
        cum += outcome.rollouts_drawn
        sizes = np.array([len(g.samples) for g in outcome.groups], dtype=np.int64)
        wins = np.array([g.rewards.sum() for g in outcome.groups], dtype=np.float64)
        mixed = (wins > 0) & (wins < sizes)
        metrics = allocator.metrics()
        record["steps"].append({
            "rollouts": cum,
            "drawn": outcome.rollouts_drawn,
            "trained": int(figures.get("trained_fresh", sizes.sum()) + figures.get("trained_reused", 0)),
            "groups": int(sizes.size),
            "mixed_groups": int(mixed.sum()),
            "mixed_rollouts": int(sizes[mixed].sum()) if sizes.size else 0,
            "zero_variance_share": float(1 - mixed.mean()) if sizes.size else 0.0,
            "allocator_zero_variance_share": metrics.get("zero_variance_share"),
            "cycles": outcome.cycles,
            "mean_reward": float(np.concatenate([g.rewards for g in outcome.groups]).mean()) if sizes.size else 0.0,
            "loss": round(loss, 5),
            "draw_seconds": round(drawer.seconds, 4),
            "update_seconds": round(update_seconds, 4),
            "allocator_seconds": round(update_start - step_start - drawer.seconds, 5),
            "epoch": stream.epoch,
            "step_seconds": round(time.perf_counter() - step_start, 4),
            **figures,
        })
        if outcome.rollouts_drawn == 0:
            break
        if cum >= next_eval or cum >= cfg.total_rollouts:
            evaluate(cum, step)
            next_eval = (cum // cfg.eval_every + 1) * cfg.eval_every
    record["optimizer_steps"] = step
    record["done"] = not (record.get("stopped_by_deadline") or record.get("error"))
    record["wall_seconds"] = time.time() - start
    if progress_path is not None:
        write_json(progress_path, record)
    return record
