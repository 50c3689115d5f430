"""A scenario's difficulty mix fitted to measured starting pass counts.

A real run measures each training prompt's starting pass rate from a few samples
(``successes`` of ``trials``). The simulator wants the latent pass rates' distribution as
a mixture of Beta components (:class:`~openrlhf_cero.sim.scenario.Scenario.difficulty`).
Taking the empirical rates as latent would overstate the spread (a prompt solved 0 of 16
times need not have p = 0), so the mixture is fitted by maximum likelihood of the counts
under a Beta-binomial mixture, which accounts for the sampling noise.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, log_softmax, logsumexp

Difficulty = tuple[tuple[float, float, float], ...]

# Component shapes stay in [1e-3, 1e3]: a Beta with a or b below 1e-3 is a point mass the
# optimiser can chase without end (likelihood keeps rising as a -> 0 on all-zero counts).
_LOG_SHAPE_BOUNDS = (np.log(1e-3), np.log(1e3))


def _beta_binomial_log_pmf(k: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log P(k | m, a, b) by broadcasting; scipy.stats.betabinom computes the same, at many
    times the cost per call (this runs inside the optimiser's loop)."""
    log_choose = gammaln(m + 1) - gammaln(k + 1) - gammaln(m - k + 1)
    return log_choose + betaln(k + a, m - k + b) - betaln(a, b)


def _unpack(params: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-weights (a free first logit fixed at 0) and the Beta shapes of each component."""
    log_weights = log_softmax(np.concatenate([[0.0], params[: components - 1]]))
    log_shapes = params[components - 1 :].reshape(components, 2)
    return log_weights, np.exp(log_shapes[:, 0]), np.exp(log_shapes[:, 1])


def mixture_log_likelihood(successes: np.ndarray, trials: np.ndarray, difficulty: Difficulty) -> float:
    """Log-likelihood of the counts under a Beta-binomial mixture (weights normalised)."""
    weights = np.array([c[0] for c in difficulty], dtype=np.float64)
    a = np.array([c[1] for c in difficulty])
    b = np.array([c[2] for c in difficulty])
    log_pmf = _beta_binomial_log_pmf(successes[:, None], trials[:, None], a[None, :], b[None, :])
    return float(logsumexp(log_pmf + np.log(weights / weights.sum())[None, :], axis=1).sum())


def fit_difficulty(successes: np.ndarray, trials: np.ndarray | int, components: int = 3, seed: int = 0) -> Difficulty:
    """Maximum-likelihood Beta mixture of the latent pass rates behind ``successes`` of ``trials``.

    Several starts (the first spreads the components from hard to easy, as RLVR data
    looks: never solved, half solved, always solved); the best likelihood wins. Components
    come back ordered by mean, weights summing to 1."""
    successes = np.asarray(successes, dtype=np.int64)
    trials = np.broadcast_to(np.asarray(trials, dtype=np.int64), successes.shape)
    if successes.size == 0:
        raise ValueError("fit_difficulty needs at least one prompt's pass counts")
    if (successes < 0).any() or (successes > trials).any():
        raise ValueError("pass counts must lie in [0, trials]")
    if components < 1:
        raise ValueError(f"components={components}; use at least 1")
    rng = np.random.default_rng(seed)
    # Prompts with the same (successes, trials) share their likelihood term: with a fixed
    # number of trials there are only trials + 1 distinct terms, whatever the prompt count.
    pairs, multiplicity = np.unique(np.column_stack([successes, trials]), axis=0, return_counts=True)
    k, m = pairs[:, :1], pairs[:, 1:]

    def negative_log_likelihood(params: np.ndarray) -> float:
        log_weights, a, b = _unpack(params, components)
        log_pmf = _beta_binomial_log_pmf(k, m, a[None, :], b[None, :])
        return -float(multiplicity @ logsumexp(log_pmf + log_weights[None, :], axis=1))

    means = np.linspace(0.1, 0.9, components) if components > 1 else np.array([successes.sum() / trials.sum()])
    spread = np.column_stack([np.log(means), np.log1p(-means)])  # Beta(p, 1-p): mean p, wide
    starts = [np.concatenate([np.zeros(components - 1), spread.ravel()])]
    starts += [np.concatenate([rng.normal(0, 1, components - 1), rng.uniform(-2, 2, 2 * components)]) for _ in range(4)]
    bounds = [(None, None)] * (components - 1) + [_LOG_SHAPE_BOUNDS] * (2 * components)
    best = min((minimize(negative_log_likelihood, x0, method="L-BFGS-B", bounds=bounds) for x0 in starts), key=lambda r: r.fun)
    log_weights, a, b = _unpack(best.x, components)
    weights = np.exp(log_weights)
    order = np.argsort(a / (a + b))
    return tuple((float(weights[i]), float(a[i]), float(b[i])) for i in order)


__all__ = ["Difficulty", "fit_difficulty", "mixture_log_likelihood"]
