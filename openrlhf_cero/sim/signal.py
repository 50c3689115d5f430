"""Gradient signal of one trained group: what the simulated policy learns from.

Model a prompt's policy as a Bernoulli "answer is correct" with logit theta, so the
score of a rollout with reward r is d log pi / d theta = r - p. With a group of n
rollouts and k successes, the estimator's gradient on theta is

- ``group_norm`` (GRPO): (1/n) sum_j (r_j - mean r) / std(r) * (r_j - p) = sqrt(k (n - k)) / n
- ``rloo``: (1/n) sum_j (r_j - mean_{-j} r) * (r_j - p) = k (n - k) / (n (n - 1))

(population std; the p terms cancel because the advantages sum to zero). Both are zero
for all-correct and all-wrong groups, which is the whole point of allocation. RLOO's is
unbiased for p(1 - p) at every n >= 2; GRPO's expectation rises with n towards
sqrt(p(1 - p)) with diminishing returns, and in both the noise falls as 1/n. The
simulator moves logits by these signals; the oracle allocates by their expectation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import gammaln, xlog1py, xlogy


def group_signal(n: np.ndarray, k: np.ndarray, kind: str = "group_norm") -> np.ndarray:
    """Signal of groups of size ``n`` with ``k`` successes (elementwise)."""
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    mixed = k * (n - k)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "group_norm":
            out = np.sqrt(np.maximum(mixed, 0.0)) / n
        elif kind == "rloo":
            out = mixed / (n * (n - 1.0))
        else:
            raise ValueError(f"unknown signal kind {kind!r}; use 'group_norm' or 'rloo'")
    return np.where((n >= 2) & (mixed > 0), out, 0.0)


@lru_cache(maxsize=8)
def _tables(n_max: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = np.arange(n_max + 1)[:, None]
    k = np.arange(n_max + 1)[None, :]
    valid = k <= n
    log_choose = np.where(valid, gammaln(n + 1) - gammaln(np.minimum(k, n) + 1) - gammaln(np.maximum(n - k, 0) + 1), -np.inf)
    signal = np.where(valid, group_signal(n, np.minimum(k, n), kind), 0.0)
    return n.astype(np.float64), k.astype(np.float64), log_choose, signal


def expected_signal(p: np.ndarray, n_max: int, kind: str = "group_norm") -> np.ndarray:
    """E[signal] of a group of n rollouts at pass rate p, for n = 0..n_max: shape (len(p), n_max+1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    n, k, log_choose, signal = _tables(int(n_max), kind)
    pp = p[:, None, None]
    log_pmf = log_choose[None] + xlogy(k[None], pp) + xlog1py(np.maximum(n - k, 0)[None], -pp)
    pmf = np.exp(log_pmf)  # exp(-inf) = 0 outside k <= n
    return np.einsum("pnk,nk->pn", pmf, signal)
