"""The scheduler's own per-prompt Beta posterior, in a bounded table.

The context of a rollout includes how hard its prompt looks (the posterior mean of its
success probability) and how sure we are (the posterior variance). The scheduler keeps
these itself, from the rewards it is shown, so that it needs nothing from the allocator.

The table is bounded (``capacity`` prompts) because a run may visit millions of prompts
and the scheduler lives inside a trainer process: when full, the prompts seen least
recently are forgotten (they fall back to the prior, which is what an unseen prompt
gets anyway). Keys are kept sorted, so a batch lookup is one ``searchsorted`` and an
insert one O(capacity) merge; there is no per-prompt Python object.

Rewards outside [0, 1] are clipped into it and count as fractional successes: a -1/+1
reward is a failure/success, a partial-credit reward in [0, 1] counts its share.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BetaTable:
    """Per-prompt Beta(alpha, beta) over the success probability, at most ``capacity`` prompts."""

    def __init__(self, capacity: int, prior_alpha: float = 1.0, prior_beta: float = 1.0) -> None:
        self.capacity = int(capacity)
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self.keys = np.zeros(0, dtype=np.uint64)
        self.alpha = np.zeros(0, dtype=np.float64)
        self.beta = np.zeros(0, dtype=np.float64)
        self.last_seen = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.keys.size)

    def update(self, prompt_ids: np.ndarray, rewards: np.ndarray, step: int) -> None:
        """Add every reward to its prompt's posterior (one vectorised pass per step)."""
        if not len(prompt_ids):
            return
        uniq, inverse = np.unique(np.asarray(prompt_ids, dtype=np.uint64), return_inverse=True)
        success = np.bincount(inverse, weights=np.clip(rewards, 0.0, 1.0), minlength=uniq.size)
        count = np.bincount(inverse, minlength=uniq.size).astype(np.float64)
        pos = np.searchsorted(self.keys, uniq)
        found = pos < self.keys.size
        found[found] = self.keys[pos[found]] == uniq[found]
        hit = pos[found]
        self.alpha[hit] += success[found]
        self.beta[hit] += count[found] - success[found]
        self.last_seen[hit] = step
        new = ~found
        if new.any():
            at = pos[new]  # uniq is sorted, so inserting before these positions keeps keys sorted
            self.keys = np.insert(self.keys, at, uniq[new])
            self.alpha = np.insert(self.alpha, at, self.prior_alpha + success[new])
            self.beta = np.insert(self.beta, at, self.prior_beta + count[new] - success[new])
            self.last_seen = np.insert(self.last_seen, at, step)
        if self.keys.size > self.capacity:
            self._evict(self.keys.size - self.capacity)

    def _evict(self, excess: int) -> None:
        """Forget the ``excess`` prompts seen least recently (ties: smaller key first, so the
        choice is a pure function of the table and survives save/load)."""
        order = np.lexsort((self.keys, self.last_seen))
        keep = np.sort(order[excess:])
        self.keys, self.alpha, self.beta, self.last_seen = (
            self.keys[keep], self.alpha[keep], self.beta[keep], self.last_seen[keep]
        )

    def posterior(self, prompt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance per id; the prior's for ids not in the table."""
        ids = np.asarray(prompt_ids, dtype=np.uint64)
        a = np.full(ids.size, self.prior_alpha)
        b = np.full(ids.size, self.prior_beta)
        if self.keys.size and ids.size:
            pos = np.minimum(np.searchsorted(self.keys, ids), self.keys.size - 1)
            found = self.keys[pos] == ids
            a[found] = self.alpha[pos[found]]
            b[found] = self.beta[pos[found]]
        total = a + b
        mean = a / total
        return mean, mean * (1.0 - mean) / (total + 1.0)

    def state(self) -> dict[str, Any]:
        return {"keys": self.keys.copy(), "alpha": self.alpha.copy(), "beta": self.beta.copy(),
                "last_seen": self.last_seen.copy()}

    def load(self, state: dict[str, Any]) -> None:
        keys = np.asarray(state["keys"], dtype=np.uint64)
        columns = [np.asarray(state[k], dtype=t) for k, t in (("alpha", np.float64), ("beta", np.float64),
                                                               ("last_seen", np.int64))]
        if any(c.shape != keys.shape for c in columns) or bool(np.any(keys[1:] < keys[:-1])):
            raise ValueError("prompt posterior table: columns differ in length or keys are not sorted")
        self.keys = keys
        self.alpha, self.beta, self.last_seen = columns
