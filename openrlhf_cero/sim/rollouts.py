"""The trainer's loss one rollout at a time, for steps that train a chosen subset of rollouts.

:mod:`openrlhf_cero.sim.signal` gives the step's gradient of OpenRLHF's loss per *group*,
which is all a step needs when every drawn rollout trains once, fresh. A rollout scheduler
(``openrlhf_cero.schedulers``) breaks both premises: it trains part of a group, and it
trains rollouts kept from earlier steps, drawn by an older policy. The gradient is then the
sum over the *trained* rollouts j of

    A_j * ratio_j * d log pi(y_j) / d theta_i,     ratio_j = pi_now(y_j) / pi_drew(y_j)

with PPO's clip (``PolicyLoss``, ``--actor.eps_clip`` 0.2): the loss term is
``-min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)``, so a rollout whose ratio lies outside
the clip range on the side its advantage pushes (A > 0 and ratio > 1 + eps, or A < 0 and
ratio < 1 - eps) contributes no gradient. For the toy policy (one Bernoulli per prompt,
p = sigmoid(theta)) log pi(correct) = log p and log pi(wrong) = log (1 - p), so
d log pi(y) / d theta = r - p. Token-mean divides by the trained samples (one token each).

A_j is the advantage the trainer computed over the *whole drawn group* before any
selection (:func:`rollout_advantages`), exactly ``shape_rewards`` (and the step-wide
whitening for ``reinforce_baseline``): a partly selected group keeps the baseline of
every rollout drawn for it. With every rollout trained fresh (ratio 1) the sum per group
is :func:`signal.group_gradient` times the whitening factor; tests/test_sim_scheduler.py
checks that for every estimator, so runs without a scheduler keep the group rule and
their figures.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_expit

from openrlhf_cero.sim.signal import GROUP_NORM_EPS, WHITEN_VAR_FLOOR, WHITENED, _check

PPO_CLIP_EPS = 0.2  # OpenRLHF's --actor.eps_clip default (PolicyLoss clip_eps_low = clip_eps_high)


def group_of_rows(sizes: np.ndarray) -> np.ndarray:
    """Group number of each row when groups of ``sizes`` lie back to back."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)


def rollout_advantages(sizes: np.ndarray, rewards: np.ndarray, estimator: str) -> np.ndarray:
    """Each rollout's advantage over its whole drawn group (groups back to back in ``rewards``),
    as ``shape_rewards`` computes it, then whitened over the step for the estimators OpenRLHF
    whitens. Groups of one rollout get 0 (the group rule teaches nothing with them either)."""
    _check(estimator)
    sizes = np.asarray(sizes, dtype=np.int64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size == 0:
        return np.zeros(0)
    group = group_of_rows(sizes)
    n = sizes.astype(np.float64)
    mean = np.bincount(group, weights=rewards, minlength=sizes.size) / np.maximum(n, 1.0)
    centred = rewards - mean[group]
    n_row = n[group]
    with np.errstate(divide="ignore", invalid="ignore"):
        if estimator == "group_norm":
            squares = np.bincount(group, weights=centred * centred, minlength=sizes.size)
            std = np.sqrt(squares / (n - 1.0))
            out = centred / (std[group] + GROUP_NORM_EPS)
        elif estimator == "rloo":
            out = rewards - (mean[group] * n_row - rewards) / (n_row - 1.0)
        else:  # reinforce_baseline, dr_grpo
            out = centred
    out = np.where(n_row >= 2, out, 0.0)
    if estimator in WHITENED:
        out = out / np.sqrt(max(float(np.mean(out * out)), WHITEN_VAR_FLOOR))
    return out


def log_prob(theta: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """log pi(y) of the toy policy: log p for a correct answer, log (1 - p) for a wrong one."""
    theta = np.asarray(theta, dtype=np.float64)
    return np.where(np.asarray(reward) > 0, log_expit(theta), log_expit(-theta))


def clipped_gradient(
    theta_now: np.ndarray,
    theta_drew: np.ndarray,
    reward: np.ndarray,
    advantage: np.ndarray,
    solvable: np.ndarray,
    clip_eps: float = PPO_CLIP_EPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout, -d(PPO loss term)/d theta before the token-mean division, and whether the
    clip cut it. ``theta_drew``: the logit of the policy that drew the rollout (its stored
    log-probability); ``solvable`` False for prompts whose pass rate is pinned at 0 (their
    log-probabilities never change, so ratio 1 and d log pi / d theta = r - 0)."""
    reward = np.asarray(reward, dtype=np.float64)
    advantage = np.asarray(advantage, dtype=np.float64)
    solvable = np.asarray(solvable, dtype=bool)
    log_ratio = np.where(solvable, log_prob(theta_now, reward) - log_prob(theta_drew, reward), 0.0)
    ratio = np.exp(np.clip(log_ratio, -20.0, 20.0))  # PolicyLoss clamps the log-ratio at +-20
    clipped = ((advantage > 0) & (ratio > 1.0 + clip_eps)) | ((advantage < 0) & (ratio < 1.0 - clip_eps))
    p_now = np.where(solvable, np.exp(log_expit(np.asarray(theta_now, dtype=np.float64))), 0.0)
    gradient = np.where(clipped, 0.0, advantage * ratio * (reward - p_now))
    return gradient, clipped


def rollout_gains(
    theta_before: np.ndarray, theta_after: np.ndarray, reward: np.ndarray, advantage: np.ndarray, solvable: np.ndarray
) -> np.ndarray:
    """The scheduler's bandit reward of each trained rollout (schedulers/base.py):
    A_j * (log pi_after(y_j) - log pi_before(y_j)); for the toy policy log(p'/p) for a correct
    answer and log((1 - p')/(1 - p)) for a wrong one. Its sign is that of A_j times the
    change of the pass rate for a correct answer, and of -A_j times it for a wrong one."""
    change = log_prob(theta_after, reward) - log_prob(theta_before, reward)
    return np.where(np.asarray(solvable, dtype=bool), np.asarray(advantage, dtype=np.float64) * change, 0.0)


def aggregate(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``values`` per distinct key; returns the keys (sorted) and their sums."""
    unique, inverse = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
    return unique, np.bincount(inverse, weights=np.asarray(values, dtype=np.float64), minlength=unique.size)
