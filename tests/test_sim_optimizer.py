"""The simulator's "adam" update: the trainer's loss gradient, rescaled per step by the running
RMS of its norm (AdamW's second moment for parameters every prompt shares)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from openrlhf_cero.allocators import AllocatorError
from openrlhf_cero.sim.scenario import PRESETS, make_scenario
from openrlhf_cero.sim.world import PromptWorld


def _step(world: PromptWorld, sizes, wins):
    before = world.theta.copy()
    index = np.arange(len(sizes))
    world.train_step(index, np.asarray(sizes), np.asarray(wins, dtype=float))
    return world.theta - before


def test_adam_moves_along_the_loss_gradient_by_a_normalised_amount():
    scenario = dataclasses.replace(
        PRESETS["quick"], optimizer="adam", drift_sd=0.0, lr_cluster=0.0, lr_global=0.0, adam_beta2=0.9
    )
    world = PromptWorld(scenario, seed=0)
    sgd = PromptWorld(dataclasses.replace(scenario, optimizer="sgd"), seed=0)
    sizes, wins = [8, 4, 16, 2], [3, 1, 8, 1]
    moved, plain = _step(world, sizes, wins), _step(sgd, sizes, wins)
    # one common positive scale per step: the trainer's gradient direction
    touched = plain != 0
    ratio = moved[touched] / plain[touched]
    assert np.allclose(ratio, ratio[0]) and ratio[0] > 0
    # the first step is divided by its own norm (bias-corrected average of one value)
    assert np.linalg.norm(moved / scenario.lr_self) == pytest.approx(1.0)
    # a step with a smaller gradient moves the policy less, but is scaled up relative to plain
    # gradient steps: what a step moves depends less on its groups than under "sgd"
    small, small_plain = _step(world, [2, 2], [1, 1]), _step(sgd, [2, 2], [1, 1])
    assert np.linalg.norm(small_plain) < np.linalg.norm(plain)
    assert 0 < np.linalg.norm(small) < np.linalg.norm(moved)
    assert np.linalg.norm(small) / np.linalg.norm(small_plain) > ratio[0]


def test_optimizer_is_a_checked_scenario_key():
    assert make_scenario("quick", {"optimizer": "adam"}).optimizer == "adam"
    with pytest.raises(AllocatorError, match="optimizer='rmsprop' is invalid; choose one of sgd, adam"):
        make_scenario("quick", {"optimizer": "rmsprop"})
    with pytest.raises(AllocatorError, match="adam_beta2"):
        make_scenario("quick", {"adam_beta2": 1.0})
