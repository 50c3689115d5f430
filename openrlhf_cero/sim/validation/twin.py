"""The simulated twin of a real run, calibrated on uniform alone.

The twin copies what is known before training: the training and held-out set sizes,
the batch, n, the group bounds, the rollout budget and the starting pass rates (a Beta
mixture fitted to the warm-up's pass counts; the task's operand-size buckets become the
simulator's topics). One thing is not known before training: how far a gradient step
moves a pass rate. It is fitted on uniform only: one scale on the deepscaler preset's
learning rates (own prompt, topic, global; their ratios kept), chosen so that the twin's
uniform gains as much train pass rate over the run as the real uniform gains in greedy
train accuracy. Every other entry is then a prediction, not a fit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import brentq

from openrlhf_cero.sim.runner import run_allocator
from openrlhf_cero.sim.scenario import PRESETS, Scenario
from openrlhf_cero.sim.validation.difficulty_fit import fit_difficulty
from openrlhf_cero.sim.validation.real_results import RealRun

# Scales tried for the learning rate, relative to the deepscaler preset's.
SCALE_RANGE = (1e-2, 1e3)


def base_twin(real: RealRun, optimizer: str = "sgd") -> Scenario:
    """The twin before calibration: the real run's setting, the deepscaler preset's dynamics,
    with ``optimizer`` ("sgd": the presets' update; "adam": the step normalised as AdamW does)."""
    base = PRESETS["deepscaler"]
    return dataclasses.replace(
        base,
        name="small_model_twin",
        difficulty=fit_difficulty(real.start_successes, real.start_trials),
        unsolvable_share=0.0,
        dataset_size=real.train_size,
        eval_size=real.eval_size,
        clusters=max(1, real.buckets),
        epochs=real.total_rollouts / (real.train_size * real.n),
        batch_size=real.batch_prompts,
        n=real.n,
        min_samples=real.min_samples,
        max_samples=real.max_samples,
        signal="group_norm",
        loss_agg_mode="token-mean",
        metric="train",
        target=0.5,  # unused by the validation: targets come from the real uniform's gain
        optimizer=optimizer,
    ).validate()


def scaled(scenario: Scenario, scale: float) -> Scenario:
    base = PRESETS["deepscaler"]
    return dataclasses.replace(
        scenario, lr_self=base.lr_self * scale, lr_cluster=base.lr_cluster * scale, lr_global=base.lr_global * scale
    )


def uniform_train_gain(scenario: Scenario, seeds: Sequence[int]) -> float:
    """Mean train pass-rate gain of the twin's uniform over the whole run."""
    gains = []
    for seed in seeds:
        record = run_allocator(scenario, "uniform", seed)
        gains.append(record.train_pass_rate[-1] - record.train_pass_rate[0])
    return float(np.mean(gains))


def real_uniform_train_gain(real: RealRun) -> float:
    at = real.equal_rollouts
    return float(np.mean([c.at("train", at) - c.train[0] for c in real.curves["uniform"]]))


@dataclass(frozen=True)
class Calibration:
    scenario: Scenario
    scale: float  # on the deepscaler preset's learning rates
    real_gain: float  # real uniform's train greedy-accuracy gain at equal rollouts
    twin_gain: float  # the calibrated twin's uniform train pass-rate gain


def calibrate(real: RealRun, seeds: Sequence[int] = (0, 1, 2, 3), optimizer: str = "sgd") -> Calibration:
    """The learning-rate scale at which the twin's uniform gains what the real uniform gains.

    Same seeds at every scale (common random numbers), so the gain is a smooth function of
    the scale and a bracketing root finder converges. A real uniform that lost accuracy
    cannot be matched by a policy-gradient twin: that is an error, not a silent fit."""
    target = real_uniform_train_gain(real)
    if not target > 0:
        raise ValueError(f"the real uniform run did not gain train accuracy ({target:+.3f}); nothing to calibrate on")
    base = base_twin(real, optimizer)

    def miss(log_scale: float) -> float:
        return uniform_train_gain(scaled(base, math.exp(log_scale)), seeds) - target

    low, high = (math.log(s) for s in SCALE_RANGE)
    if miss(high) < 0:
        raise ValueError(f"the twin's uniform gains less than the real one ({target:.3f}) even at scale {SCALE_RANGE[1]:g}")
    log_scale = brentq(miss, low, high, xtol=1e-3) if miss(low) < 0 else low
    scenario = scaled(base, math.exp(log_scale))
    return Calibration(scenario, math.exp(log_scale), target, uniform_train_gain(scenario, seeds))


__all__ = ["Calibration", "base_twin", "calibrate", "real_uniform_train_gain", "scaled", "uniform_train_gain"]
