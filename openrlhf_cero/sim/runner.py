"""One simulated training run: an allocator, a scenario, a seed.

Every step goes through :func:`openrlhf_cero.allocators.step_loop.run_step`, the loop
the OpenRLHF generator runs, so pilot rounds, skipped prompts and refills happen here
exactly as in training, and every rollout drawn (trained or not) is counted. The
allocator is reached only through the public contract (``create_allocator``,
``plan``, ``extend``, ``finish``); new allocators appear without changes here. The
baselines (:mod:`openrlhf_cero.sim.baselines`) and the oracle run through the same loop;
a baseline with an ``accept_group`` method (dynamic filtering) filters groups as
OpenRLHF's dynamic filtering does, through the step loop's ``accept``.

With a rollout scheduler (``scheduler="cbs"`` or ``{"name": "cbs", "buffer_size": ...}``)
the step's drawn groups go to :class:`openrlhf_cero.sim.scheduled.ScheduledTrainer`, which
trains the batch the scheduler picks (fresh and buffered rollouts) per rollout with PPO's
ratio and clip; rollouts are counted as drawn, so a reused rollout costs nothing again.
Without one, the step trains every drawn group by the group rule, as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from openrlhf_cero.allocators.base import RolloutAllocator
from openrlhf_cero.allocators.registry import create_allocator
from openrlhf_cero.allocators.step_loop import run_step
from openrlhf_cero.schedulers.base import SchedulerError
from openrlhf_cero.schedulers.registry import NO_SCHEDULER, create_scheduler
from openrlhf_cero.sim.baselines import BASELINES
from openrlhf_cero.sim.oracle import OracleAllocator
from openrlhf_cero.sim.scenario import Scenario
from openrlhf_cero.sim.scheduled import ScheduledTrainer
from openrlhf_cero.sim.world import PromptWorld

ORACLE = "oracle"
# Refill cycles per step before a run is declared stuck (an allocator without its own cap
# that skips every prompt would otherwise loop over the endless epoch stream).
SIM_MAX_CYCLES = 1000


@dataclass
class RunRecord:
    """Per-step figures of one run; index 0 is the state before training."""

    allocator: str
    seed: int
    cum_rollouts: np.ndarray  # rollouts drawn so far, skipped prompts included
    eval_pass_rate: np.ndarray
    train_pass_rate: np.ndarray
    trained_groups: np.ndarray
    mixed_groups: np.ndarray  # trained groups with both outcomes
    rollouts_trained: np.ndarray
    rollouts_mixed: np.ndarray  # rollouts in trained mixed groups
    allocator_seconds: np.ndarray
    size_counts: np.ndarray  # trained groups by size 0..max_samples, summed over the run
    prompts_consumed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, which: str) -> np.ndarray:
        return self.eval_pass_rate if which == "eval" else self.train_pass_rate

    @property
    def steps(self) -> int:
        return self.cum_rollouts.size - 1

    @property
    def zero_variance_share(self) -> np.ndarray:
        groups = self.trained_groups[1:]
        return np.where(groups > 0, 1.0 - self.mixed_groups[1:] / np.maximum(groups, 1), np.nan)


class EpochStream:
    """Prompts in the order OpenRLHF's dataloader gives them: shuffled each epoch, epochs back
    to back (the run ends on rollouts, not on the data)."""

    def __init__(self, world: PromptWorld) -> None:
        self.world = world
        self.order = world.epoch_order()
        self.position = 0
        self.epoch = 0
        self.consumed = 0

    def take(self, k: int) -> tuple[np.ndarray, list[int]]:
        taken: list[np.ndarray] = []
        while k > 0:
            if self.position == self.order.size:
                self.order, self.position, self.epoch = self.world.epoch_order(), 0, self.epoch + 1
            chunk = self.order[self.position : self.position + k]
            self.position += chunk.size
            k -= chunk.size
            taken.append(chunk)
        index = np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)
        self.consumed += index.size
        return self.world.ids[index], index.tolist()


def build_allocator(
    name: str, scenario: Scenario, seed: int, world: PromptWorld, options: Mapping[str, Any] | None = None
) -> RolloutAllocator:
    settings: dict[str, Any] = dict(
        n_samples_per_prompt=scenario.n,
        min_samples=scenario.min_samples,
        max_samples=scenario.max_samples,
        seed=seed,
        advantage_estimator=scenario.signal,
    )
    if name == ORACLE:
        return OracleAllocator(world=world, **settings, **dict(options or {}))
    if name in BASELINES:
        return BASELINES[name](**settings, **dict(options or {}))
    return create_allocator(name, **settings, **dict(options or {}))


def scheduler_settings(spec: "str | Mapping[str, Any] | None") -> tuple[str, dict[str, Any]] | None:
    """(name, settings) of a scheduler spec; None for no scheduler (None or "none")."""
    if spec is None:
        return None
    if isinstance(spec, str):
        name, settings = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        settings = dict(spec)
        name = settings.pop("name")
    else:
        raise SchedulerError(f"a scheduler is a name or a mapping with a 'name' key, got {spec!r}")
    return None if name == NO_SCHEDULER else (name, settings)


def run_allocator(
    scenario: Scenario,
    allocator_name: str,
    seed: int,
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    keep_snapshots: bool = False,
    scheduler: "str | Mapping[str, Any] | None" = None,
) -> RunRecord:
    """Train until ``scenario.total_rollouts`` rollouts are drawn; ``on_step`` gets each step's rollouts.

    ``keep_snapshots`` stores the train prompts' pass rates at every epoch start (for calibration).
    ``scheduler``: a rollout scheduler picks each step's training batch (module docstring); its
    per-step metrics and timings are in ``extra["scheduler"]``."""
    started = time.perf_counter()
    world = PromptWorld(scenario, seed)
    allocator = build_allocator(allocator_name, scenario, seed, world, options)
    chosen = scheduler_settings(scheduler)
    trainer = None
    if chosen is not None:
        trainer = ScheduledTrainer(world, create_scheduler(chosen[0], **{"seed": seed, **chosen[1]}))
    scheduled: dict[str, list[float]] = {}
    # As the trainer does: the run's shape, for allocators whose step totals vary (CERO's global budget).
    allocator.fit_to_run(steps=math.ceil(scenario.total_rollouts / scenario.step_budget), step_budget=scenario.step_budget)
    step_bound = allocator.step_total_bound(scenario.step_budget)
    stream = EpochStream(world)
    max_cycles = getattr(allocator, "max_cycles", None) or SIM_MAX_CYCLES
    accept = getattr(allocator, "accept_group", None)
    draw_seconds = 0.0

    def draw(handles: list[int], counts: np.ndarray) -> list[tuple[list[None], np.ndarray]]:
        nonlocal draw_seconds
        start = time.perf_counter()
        rewards = world.draw(np.asarray(handles, dtype=np.int64), counts)
        out = [([None] * int(c), r) for c, r in zip(counts, rewards)]
        draw_seconds += time.perf_counter() - start
        return out

    rows = [(0, world.mean_pass_rate("eval") if scenario.eval_size else np.nan, world.mean_pass_rate("train"), 0, 0, 0, 0, 0.0)]
    size_counts = np.zeros(scenario.max_samples + 1, dtype=np.int64)
    cum = 0
    short_steps = 0  # steps that trained less than the budget or needed the allocator's fallback
    snapshots = [world.pass_rates[: world.n_train].copy()] if keep_snapshots else []
    while cum < scenario.total_rollouts:
        epoch_before = stream.epoch
        draw_seconds = 0.0
        start = time.perf_counter()
        outcome = run_step(allocator, step_bound, stream.take, draw, accept=accept, max_cycles=max_cycles)
        alloc_seconds = time.perf_counter() - start - draw_seconds
        index = np.fromiter((g.handle for g in outcome.groups), dtype=np.int64, count=len(outcome.groups))
        sizes = np.fromiter((len(g.samples) for g in outcome.groups), dtype=np.int64, count=index.size)
        wins = np.fromiter((g.rewards.sum() for g in outcome.groups), dtype=np.float64, count=index.size)
        mixed = (wins > 0) & (wins < sizes)
        if trainer is None:
            world.train_step(index, sizes, wins)
            trained = (index.size, int(mixed.sum()), int(sizes.sum()), int(sizes[mixed].sum()))
        else:
            figures = trainer.step(index, [g.rewards for g in outcome.groups])
            trained = (figures.trained_groups, figures.mixed_groups, figures.trained, figures.rollouts_mixed)
            for key, value in {
                "reused": figures.reused, "clipped": figures.clipped, "select_seconds": figures.select_seconds,
                "feedback_seconds": figures.feedback_seconds, **figures.metrics,
            }.items():
                scheduled.setdefault(key, []).append(float(value))
        if getattr(outcome, "warning", None) or (not allocator.variable_step_total and int(sizes.sum()) < scenario.step_budget):
            short_steps += 1
        np.add.at(size_counts, np.minimum(sizes, scenario.max_samples), 1)
        cum += outcome.rollouts_drawn
        rows.append(
            (
                cum,
                world.mean_pass_rate("eval") if scenario.eval_size else np.nan,
                world.mean_pass_rate("train"),
                *trained,
                alloc_seconds,
            )
        )
        if keep_snapshots and stream.epoch > epoch_before:
            snapshots.append(world.pass_rates[: world.n_train].copy())
        if on_step is not None:
            on_step(outcome.rollouts_drawn)
        if outcome.rollouts_drawn == 0:  # nothing drawn and nothing left: avoid an endless run
            break
    cols = list(zip(*rows))
    return RunRecord(
        allocator=allocator_name if chosen is None else f"{allocator_name}+{chosen[0]}",
        seed=seed,
        cum_rollouts=np.array(cols[0], dtype=np.int64),
        eval_pass_rate=np.array(cols[1], dtype=np.float64),
        train_pass_rate=np.array(cols[2], dtype=np.float64),
        trained_groups=np.array(cols[3], dtype=np.int64),
        mixed_groups=np.array(cols[4], dtype=np.int64),
        rollouts_trained=np.array(cols[5], dtype=np.int64),
        rollouts_mixed=np.array(cols[6], dtype=np.int64),
        allocator_seconds=np.array(cols[7], dtype=np.float64),
        size_counts=size_counts,
        prompts_consumed=stream.consumed,
        extra={
            "epochs_started": stream.epoch + 1,
            "short_steps": short_steps,
            "wall_seconds": time.perf_counter() - started,
            "world_rollouts_drawn": world.rollouts_drawn,
            "never_solved_share": float((world.successes_total[: world.n_train] == 0).mean()),
            "pass_rate_snapshots": np.array(snapshots) if keep_snapshots else None,
            **({"scheduler": {k: np.array(v) for k, v in scheduled.items()}} if trainer is not None else {}),
        },
    )
