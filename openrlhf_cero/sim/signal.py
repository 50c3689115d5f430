"""The policy gradient of OpenRLHF's loss for a toy policy with one logit per prompt.

Model a prompt's policy as a Bernoulli "answer is correct" with logit theta, p = sigmoid(theta),
so a rollout with reward r in {0, 1} has d log pi / d theta = r - p. OpenRLHF's policy loss
(``PolicyLoss``; at the first optimizer step of a batch the PPO ratio is 1, so clipping is
inactive) is

    L = -sum_j A_j * ratio_j / N_step

with ``--actor.loss_agg_mode token-mean`` (the mean over every token of the step) and,
with one token per sample, the same with ``seq-mean-token-mean`` (the mean over sequences
of each sequence's token mean). The gradient ascent step on prompt i's logit is therefore

    -dL/dtheta_i = sum_{j in group i} A_j (r_j - p_i) / N_step.

A group weighs by its number of samples: this is what :func:`group_gradient` computes, the
sum over the group (the caller divides by the step's sample count). The advantages A_j are
those of the project's advantage code (``openrlhf_cero.openrlhf.advantages.shape_rewards``):

- ``group_norm`` (GRPO): (r_j - mean) / (unbiased std + 1e-9)
- ``rloo``: r_j - mean of the other rewards of the group
- ``reinforce_baseline``, ``dr_grpo``: r_j - mean; OpenRLHF then whitens
  ``reinforce_baseline``'s advantages over the whole step (:func:`whitening_factor`).

With binary rewards and k successes in n, sum_j (r_j - mean)(r_j - p) = k (n - k) / n (the
p term cancels: the advantages of a group sum to zero), so

- group_norm: [k (n - k) / n] / (sqrt(k (n - k) / (n (n - 1))) + 1e-9)  ~ sqrt(k (n - k) (n - 1) / n)
- rloo: k (n - k) / (n - 1)                      (expectation n p (1 - p))
- reinforce_baseline / dr_grpo: k (n - k) / n    (expectation (n - 1) p (1 - p))

All are zero for all-correct and all-wrong groups, which is the whole point of
allocation, and all grow about linearly with n: a group of 16 teaches about twice what a
group of 8 does, as in the trainer. tests/test_sim_loss.py checks these against the
gradient autograd computes through ``shape_rewards`` and OpenRLHF's own ``PolicyLoss``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import gammaln, xlog1py, xlogy

# Advantage estimators the simulator models (each with a per-prompt group baseline).
ESTIMATORS = ("group_norm", "rloo", "reinforce_baseline", "dr_grpo")
# Estimators whose advantages OpenRLHF whitens over the whole step after the group baseline.
WHITENED = ("reinforce_baseline",)
# --actor.loss_agg_mode values of OpenRLHF 0.11.2.
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
GROUP_NORM_EPS = 1e-9  # shape_rewards: (r - mean) / (std + 1e-9)
WHITEN_VAR_FLOOR = 1e-8  # _whiten_advantages: var.clamp(min=1e-8)


def _check(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; the simulator models {', '.join(ESTIMATORS)}")


def group_gradient(n: np.ndarray, k: np.ndarray, estimator: str = "group_norm") -> np.ndarray:
    """sum_j A_j (r_j - p) of groups of size ``n`` with ``k`` successes (elementwise), before the
    division by the step's sample count and before any whitening."""
    _check(estimator)
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        squares = np.maximum(k * (n - k), 0.0) / n  # sum_j (r_j - mean)^2
        if estimator == "group_norm":
            out = squares / (np.sqrt(squares / (n - 1.0)) + GROUP_NORM_EPS)
        elif estimator == "rloo":
            out = squares * n / (n - 1.0)
        else:  # reinforce_baseline, dr_grpo
            out = squares
    return np.where((n >= 2) & (squares > 0), out, 0.0)


def whitening_factor(n: np.ndarray, k: np.ndarray, estimator: str) -> float:
    """1 / std of the step's advantages over all its samples for estimators OpenRLHF whitens
    (their mean is zero: each group's advantages sum to zero), else 1."""
    if estimator not in WHITENED:
        return 1.0
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        return 1.0
    squares = np.maximum(k * (n - k), 0.0) / np.maximum(n, 1.0)
    return float(1.0 / np.sqrt(max(squares.sum() / total, WHITEN_VAR_FLOOR)))


@lru_cache(maxsize=16)
def _tables(n_max: int, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = np.arange(n_max + 1)[:, None]
    k = np.arange(n_max + 1)[None, :]
    valid = k <= n
    log_choose = np.where(valid, gammaln(n + 1) - gammaln(np.minimum(k, n) + 1) - gammaln(np.maximum(n - k, 0) + 1), -np.inf)
    gradient = np.where(valid, group_gradient(n, np.minimum(k, n), estimator), 0.0)
    return n.astype(np.float64), k.astype(np.float64), log_choose, gradient


def expected_group_gradient(p: np.ndarray, n_max: int, estimator: str = "group_norm") -> np.ndarray:
    """E[group_gradient] of a group of n rollouts at pass rate p, for n = 0..n_max: shape (len(p), n_max+1)."""
    _check(estimator)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if estimator != "group_norm":  # closed forms: E[k (n - k)] = n (n - 1) p (1 - p)
        n = np.arange(n_max + 1, dtype=np.float64)
        per = n if estimator == "rloo" else n - 1.0
        return np.where(n >= 2, per, 0.0)[None, :] * (p * (1.0 - p))[:, None]
    n, k, log_choose, gradient = _tables(int(n_max), estimator)
    pp = p[:, None, None]
    log_pmf = log_choose[None] + xlogy(k[None], pp) + xlog1py(np.maximum(n - k, 0)[None], -pp)
    pmf = np.exp(log_pmf)  # exp(-inf) = 0 outside k <= n
    return np.einsum("pnk,nk->pn", pmf, gradient)


_GRID = 2048  # pass-rate grid of the lookup table


@lru_cache(maxsize=16)
def _grid_table(n_max: int, estimator: str) -> np.ndarray:
    return expected_group_gradient(np.linspace(0.0, 1.0, _GRID + 1), n_max, estimator)


def expected_group_gradient_lookup(p: np.ndarray, n_max: int, estimator: str = "group_norm") -> np.ndarray:
    """:func:`expected_group_gradient` by linear interpolation on a grid of 2049 pass rates (exact
    at p = 0 and 1, within about 1e-5 of the largest entry elsewhere): what the oracle calls every step."""
    table = _grid_table(int(n_max), estimator)
    x = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0) * _GRID
    i = np.minimum(x.astype(np.int64), _GRID - 1)
    t = (x - i)[:, None]
    return table[i] * (1.0 - t) + table[i + 1] * t
