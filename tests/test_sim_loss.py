"""The simulator's learning rule is the gradient of the trainer's loss.

A toy policy in torch with one logit per prompt (a sample's action "correct" has
log-prob log p, "wrong" log(1 - p)); a step of unequal groups with binary rewards goes
through the project's advantage code (``shape_rewards``, and for reinforce_baseline the
step-wide whitening of ``VariableGroupExperienceMaker``) and OpenRLHF's own
``PolicyLoss`` (one token per sample, old log-probs = detached log-probs, action mask
ones), then backward. The simulator's per-prompt update must be that gradient times one
common scale (batch_size * lr_self), to 1e-6 relative, and its transfer terms must be
built from the same per-group gradients. OpenRLHF is imported in CPU mode
(tests/conftest.py).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from openrlhf.models import PolicyLoss

from openrlhf_cero.openrlhf.advantages import VariableGroupExperienceMaker, shape_rewards
from openrlhf_cero.sim.scenario import make_scenario
from openrlhf_cero.sim.signal import ESTIMATORS, LOSS_AGG_MODES, WHITENED
from openrlhf_cero.sim.world import PromptWorld

# Unequal groups: sizes 2..13, zero-variance ones (all wrong, all right) among them.
GROUPS = [
    [1, 0],
    [1, 1, 1],
    [0, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1],
    [0, 1, 1],
    [0, 1, 0, 1, 1, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 1],
]
BATCH_SIZE = 4  # the scenario's nominal prompts per step: the common scale


def torch_gradient(estimator: str, loss_agg_mode: str, theta0: np.ndarray) -> np.ndarray:
    """-dL/dtheta of OpenRLHF's policy loss for the toy policy (the ascent direction)."""
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([r for g in GROUPS for r in g], dtype=torch.float64)
    groups = torch.tensor([i for i, g in enumerate(GROUPS) for _ in g])
    logit = theta[groups]
    log_probs = torch.where(rewards > 0, torch.nn.functional.logsigmoid(logit), torch.nn.functional.logsigmoid(-logit))
    advantages = shape_rewards(rewards, groups, estimator)
    mask = torch.ones(rewards.numel(), 1)
    if estimator in WHITENED:  # the trainer's whitening over the whole step, the project's own code
        experience = SimpleNamespace(advantages=advantages[:, None].clone(), action_mask=mask)
        maker = SimpleNamespace(strategy=SimpleNamespace(args=SimpleNamespace(
            algo=SimpleNamespace(advantage=SimpleNamespace(no_std_norm=False)))))
        VariableGroupExperienceMaker._whiten_advantages(maker, [experience])
        advantages = experience.advantages[:, 0]
    loss_fn = PolicyLoss(token_level_loss=loss_agg_mode == "token-mean")
    loss = loss_fn(log_probs[:, None], log_probs.detach()[:, None], advantages[:, None].to(torch.float64), action_mask=mask)[0]
    loss.backward()
    return -theta.grad.numpy()


def simulator_world(estimator: str, loss_agg_mode: str, **dynamics) -> PromptWorld:
    overrides = {
        "dataset_size": 64, "eval_size": 16, "batch_size": BATCH_SIZE, "clusters": 4, "signal": estimator,
        "loss_agg_mode": loss_agg_mode, "lr_self": 1.0, "lr_cluster": 0.0, "lr_global": 0.0, "drift_sd": 0.0,
    }
    world = PromptWorld(make_scenario("quick", {**overrides, **dynamics}), seed=0)
    world.unsolvable[:] = False
    return world


def simulator_step(world: PromptWorld, theta0: np.ndarray) -> np.ndarray:
    index = np.arange(len(GROUPS))
    world.theta[index] = theta0
    before = world.theta.copy()
    world.train_step(index, np.array([len(g) for g in GROUPS]), np.array([sum(g) for g in GROUPS], dtype=float))
    return world.theta - before


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_update_is_the_gradient_of_openrlhfs_loss(estimator, loss_agg_mode):
    theta0 = np.random.default_rng(0).normal(0.0, 1.5, size=len(GROUPS))
    gradient = torch_gradient(estimator, loss_agg_mode, theta0)
    world = simulator_world(estimator, loss_agg_mode)
    delta = simulator_step(world, theta0)[: len(GROUPS)]
    scale = BATCH_SIZE * world.scenario.lr_self
    np.testing.assert_allclose(delta, scale * gradient, rtol=0, atol=1e-6 * np.abs(scale * gradient).max())
    mixed = np.array([0 < sum(g) < len(g) for g in GROUPS])
    assert (np.abs(gradient[mixed]) > 1e-3).all()  # the check is not vacuous
    np.testing.assert_allclose(delta[mixed] / gradient[mixed], scale, rtol=1e-6)
    # A group teaches in proportion to its size (token-mean): the largest mixed group moves most.
    assert np.argmax(np.abs(delta)) == 4


def test_both_aggregation_modes_give_the_same_update_with_one_token_per_sample():
    theta0 = np.linspace(-2.0, 2.0, len(GROUPS))
    np.testing.assert_allclose(
        torch_gradient("group_norm", "token-mean", theta0), torch_gradient("group_norm", "seq-mean-token-mean", theta0),
        rtol=1e-12,
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_transfer_terms_are_built_from_the_same_gradients(estimator):
    theta0 = np.random.default_rng(1).normal(0.0, 1.0, size=len(GROUPS))
    gradient = torch_gradient(estimator, "token-mean", theta0)
    lr_self, lr_cluster, lr_global = 0.5, 0.2, 0.1
    world = simulator_world(estimator, "token-mean", lr_self=lr_self, lr_cluster=lr_cluster, lr_global=lr_global)
    delta = simulator_step(world, theta0)
    sc = world.scenario
    scaled = BATCH_SIZE * gradient  # G_i
    topic = world.topic[: len(GROUPS)]
    per_topic = np.bincount(topic, weights=scaled, minlength=sc.clusters)
    want = lr_cluster * per_topic[world.topic] / (sc.batch_size / sc.clusters) + lr_global * scaled.sum() / sc.batch_size
    want[: len(GROUPS)] += lr_self * scaled
    np.testing.assert_allclose(delta, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_a_uniform_step_moves_a_prompt_by_its_groups_mean_gradient():
    """The common scale batch_size: in a step of batch_size groups of n, G_i is the group's
    per-sample mean gradient, whatever n."""
    world = simulator_world("rloo", "token-mean")
    for n in (4, 8, 16):
        sizes = np.full(BATCH_SIZE, n)
        wins = np.array([1, n // 2, n - 1, 0], dtype=float)
        mean_gradient = wins * (n - wins) / (n * (n - 1))  # RLOO's per-sample mean on a Bernoulli logit
        np.testing.assert_allclose(world.step_gradients(sizes, wins), mean_gradient, rtol=1e-12)
