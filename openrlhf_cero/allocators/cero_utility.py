"""CERO's value and utility functions (see docs/cero.md for the derivation).

A prompt's posterior over its success probability is Beta(alpha, beta). The value of
more rollouts on it is the posterior expected Bernoulli variance
``v = E[p (1 - p)] = alpha beta / ((alpha + beta)(alpha + beta + 1))``: high where the
outcome is uncertain, low where the prompt is almost surely solved or unsolved (their
groups have no reward variance, hence no gradient).

The utility of the *cumulative* allocation X (all visits so far) is concave and
saturating, ``U(X) = v k u(X / k)`` with ``u(0) = 0``, ``u'(0) = 1``, u bounded. Its
marginal ``U'(X) = v u'(X / k)`` is what the Fenchel dual variable mu tracks. All duals
are kept as logarithms: after a few epochs ``exp(-X / k)`` underflows float64, while its
logarithm ``-X / k`` does not.

Two forms:

* ``exp``:        u(x) = 1 - exp(-x),     u'(x) = exp(-x)
* ``hyperbolic``: u(x) = x / (1 + x),     u'(x) = 1 / (1 + x)^2 (heavier tail: history
  discounts allocation more gently)

Each form answers the one question the allocator asks: starting from cumulative X with
current marginal mu, how many more rollouts n bring the marginal down to lambda?
That is the smoothed per-visit decision; it is increasing in log(mu / lambda) and 0
at mu = lambda.
"""

from __future__ import annotations

import numpy as np

UTILITY_FORMS = ("exp", "hyperbolic")


def beta_value(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Posterior expected Bernoulli variance E[p(1-p)] under Beta(alpha, beta)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    total = alpha + beta
    return alpha * beta / (total * (total + 1.0))


def log_marginal(form: str, log_value: np.ndarray, cumulative: np.ndarray, scale: float) -> np.ndarray:
    """log U'(X) = log v + log u'(X / k): the Fenchel minimiser's log at cumulative X."""
    x = np.asarray(cumulative, dtype=np.float64) / scale
    if form == "exp":
        return log_value - x
    if form == "hyperbolic":
        return log_value - 2.0 * np.log1p(x)
    raise ValueError(f"unknown utility form {form!r}; choose from {UTILITY_FORMS}")


def rollouts_to_level(form: str, log_ratio: np.ndarray, cumulative: np.ndarray, scale: float) -> np.ndarray:
    """Continuous n >= 0 with U'(X + n) = lambda, from log(mu / lambda) (negative -> 0)."""
    r = np.maximum(log_ratio, 0.0)
    if form == "exp":  # memoryless: exp(-(X + n)/k) = exp(-X/k) exp(-n/k)
        return scale * r
    if form == "hyperbolic":  # (1 + (X + n)/k)^2 = (mu / lambda) (1 + X/k)^2
        return (scale + np.asarray(cumulative, dtype=np.float64)) * np.expm1(0.5 * r)
    raise ValueError(f"unknown utility form {form!r}; choose from {UTILITY_FORMS}")


def log_ratio_for(form: str, rollouts: float | np.ndarray, cumulative: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`rollouts_to_level`: the log(mu / lambda) at which n = ``rollouts``."""
    if form == "exp":
        return np.broadcast_to(np.asarray(rollouts, dtype=np.float64) / scale, np.shape(cumulative))
    if form == "hyperbolic":
        return 2.0 * np.log1p(rollouts / (scale + np.asarray(cumulative, dtype=np.float64)))
    raise ValueError(f"unknown utility form {form!r}; choose from {UTILITY_FORMS}")


def log_entry_gain(form: str, rollouts: float, cumulative: np.ndarray, scale: float) -> np.ndarray:
    """log of (U(X + L) - U(X)) / (L U'(X)): the first L rollouts' mean marginal utility
    relative to the current marginal. A prompt is worth a group of L only if its
    mu times this factor reaches lambda."""
    x = np.asarray(cumulative, dtype=np.float64) / scale
    if form == "exp":
        return np.full(x.shape, np.log(-np.expm1(-rollouts / scale) * scale / rollouts))
    if form == "hyperbolic":
        return np.log1p(x) - np.log1p(x + rollouts / scale)
    raise ValueError(f"unknown utility form {form!r}; choose from {UTILITY_FORMS}")


def utility(form: str, value: np.ndarray, cumulative: np.ndarray, scale: float) -> np.ndarray:
    """U(X) = v k u(X / k), for benchmarks and the offline optimum."""
    x = np.asarray(cumulative, dtype=np.float64) / scale
    if form == "exp":
        return value * scale * -np.expm1(-x)
    if form == "hyperbolic":
        return value * scale * x / (1.0 + x)
    raise ValueError(f"unknown utility form {form!r}; choose from {UTILITY_FORMS}")
