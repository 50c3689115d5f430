"""The neural scorer: an MLP learns the gain from the context; a ridge head explores.

This is Neural-LinUCB's "shallow exploration" (Xu, Wen, Zhao and Gu, ICLR 2022,
"Neural Contextual Bandits with Deep Representation and Shallow Exploration"):

* a small MLP (two ``hidden``-wide ReLU layers and a linear head) is trained online, by
  a few Adam steps after each feedback, to predict the (normalised) gain from the
  standardised context, on a bounded replay of the (context, gain) pairs seen;
* its last hidden layer phi(x) (plus a constant) is the representation of an arm; on it
  a ridge regression gives the mean estimate theta^T phi and the confidence width
  sqrt(phi^T A^-1 phi), A = lambda I + sum phi phi^T over the replay;
* an arm's upper confidence bound is theta^T phi + beta * sqrt(phi^T A^-1 phi).

Only the last layer carries the exploration, so the bonus costs a (d+1)x(d+1) solve per
feedback and one matrix product per select, not the network's full Jacobian as in
NeuralUCB. The regret argument and its assumptions are in docs/cbs.md.

Everything is deterministic given the seed: initial weights and minibatches come from a
private ``torch.Generator``; the global torch RNG and thread settings are left alone.
Gains are divided by their RMS over the replay (not centred, so a zero gain stays zero),
which makes ``exploration`` (beta) and ``ridge`` (lambda) scale-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class NeuralUCBScorer:
    """Online MLP gain model with a ridge UCB head on its last hidden layer."""

    def __init__(
        self,
        dim: int,
        *,
        hidden: int,
        lr: float,
        ridge: float,
        replay_size: int,
        batch_size: int,
        train_steps: int,
        seed: int,
    ) -> None:
        self.dim, self.hidden, self.ridge = int(dim), int(hidden), float(ridge)
        self.replay_size, self.batch_size, self.train_steps = int(replay_size), int(batch_size), int(train_steps)
        self.generator = torch.Generator().manual_seed(int(seed))
        # Built on the meta device, so that torch's default init does not draw from (and
        # advance) the caller's global RNG: a scheduler in warm-up must leave training as stock.
        meta = dict(device="meta")
        self.body = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden, **meta), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden, **meta),
            torch.nn.ReLU(),
        ).to_empty(device="cpu")
        self.head = torch.nn.Linear(hidden, 1, **meta).to_empty(device="cpu")
        with torch.no_grad():  # our init draws from the private generator
            for layer in (*self.body[::2], self.head):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=self.generator)
                layer.bias.uniform_(-bound, bound, generator=self.generator)
        self.optimizer = torch.optim.Adam([*self.body.parameters(), *self.head.parameters()], lr=float(lr))
        self.replay_x = np.zeros((self.replay_size, dim), dtype=np.float32)
        self.replay_g = np.zeros(self.replay_size, dtype=np.float64)
        self.replay_count = 0  # pairs ever added; the ring holds the last replay_size
        self.x_mean = np.zeros(dim, dtype=np.float64)
        self.x_scale = np.ones(dim, dtype=np.float64)
        self.gain_scale = 1.0
        width = hidden + 1
        self.a_inv = np.eye(width) / self.ridge
        self.theta = np.zeros(width)
        self.last_loss = float("nan")
        self._refresh_fast_path()

    @property
    def trained(self) -> bool:
        return self.replay_count > 0

    def _replay(self) -> tuple[np.ndarray, np.ndarray]:
        size = min(self.replay_count, self.replay_size)
        return self.replay_x[:size], self.replay_g[:size]

    def _refresh_fast_path(self) -> None:
        """float32 torch copies of what ``ucb`` reads, split so the appended constant of phi
        costs no concatenation: phi^T A^-1 phi = h^T P h + 2 h^T p + p0 for phi = (h, 1)."""
        as32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        self._mean32, self._inv_scale32 = as32(self.x_mean), as32(1.0 / self.x_scale)
        self._theta_h, self._theta_0 = as32(self.theta[:-1]), float(self.theta[-1])
        self._p_hh, self._p_h1, self._p_11 = as32(self.a_inv[:-1, :-1]), as32(self.a_inv[:-1, -1]), float(
            self.a_inv[-1, -1])

    def ucb(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean estimate and confidence width per row, in units of the replay's gain RMS
        (float32 torch throughout: this is the select hot path)."""
        with torch.no_grad():
            h = self.body((torch.from_numpy(x) - self._mean32) * self._inv_scale32)
            mean = h @ self._theta_h + self._theta_0
            quad = ((h @ self._p_hh) * h).sum(dim=1) + 2.0 * (h @ self._p_h1) + self._p_11
            width = quad.clamp_min_(0.0).sqrt_()
        return mean.numpy().astype(np.float64), width.numpy().astype(np.float64)

    def observe(self, x: np.ndarray, gains: np.ndarray) -> None:
        """Add (context, gain) pairs, refresh the standardisation, train, refit the ridge head."""
        count = len(gains)
        if not count:
            return
        at = (self.replay_count + np.arange(count)) % self.replay_size
        if count > self.replay_size:  # only the last replay_size of a huge batch fit
            at, x, gains = at[-self.replay_size:], x[-self.replay_size:], gains[-self.replay_size:]
        self.replay_x[at] = x
        self.replay_g[at] = gains
        self.replay_count += count
        rx, rg = self._replay()
        self.x_mean = rx.mean(axis=0, dtype=np.float64)
        std = rx.std(axis=0, dtype=np.float64)
        self.x_scale = np.where(std > 1e-6, std, 1.0)  # constant columns (e.g. never reused yet) pass as is
        rms = float(np.sqrt(np.mean(rg * rg)))
        self.gain_scale = rms if rms > 0 else 1.0
        self._refresh_fast_path()
        target = rg / self.gain_scale
        self._train(target)
        with torch.no_grad():  # ridge head on the trained features; torch, like the forward pass
            h = self.body((torch.from_numpy(rx) - self._mean32) * self._inv_scale32).double()
            phi = torch.cat([h, torch.ones(h.shape[0], 1, dtype=torch.float64)], dim=1)
            gram = (phi.T @ phi).numpy() + self.ridge * np.eye(phi.shape[1])
            moment = (phi.T @ torch.from_numpy(target)).numpy()
        self.a_inv = np.linalg.inv(gram)
        self.a_inv = 0.5 * (self.a_inv + self.a_inv.T)  # exactly symmetric, so the width is a norm
        self.theta = self.a_inv @ moment
        self._refresh_fast_path()

    def _train(self, target: np.ndarray) -> None:
        rx, _ = self._replay()
        z = (torch.from_numpy(rx) - self._mean32) * self._inv_scale32
        y = torch.from_numpy(target.astype(np.float32))
        batch = min(self.batch_size, len(y))
        for _ in range(self.train_steps):
            idx = torch.randint(0, len(y), (batch,), generator=self.generator)
            loss = torch.mean((self.head(self.body(z[idx])).squeeze(1) - y[idx]) ** 2)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.last_loss = float(loss.detach())

    def state(self) -> dict[str, Any]:
        size = min(self.replay_count, self.replay_size)
        return {
            "body": {k: v.clone() for k, v in self.body.state_dict().items()},
            "head": {k: v.clone() for k, v in self.head.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "replay_x": self.replay_x[:size].copy(),
            "replay_g": self.replay_g[:size].copy(),
            "replay_count": self.replay_count,
            "x_mean": self.x_mean.copy(),
            "x_scale": self.x_scale.copy(),
            "gain_scale": self.gain_scale,
            "a_inv": self.a_inv.copy(),
            "theta": self.theta.copy(),
            "last_loss": self.last_loss,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.body.load_state_dict(state["body"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        rx = np.asarray(state["replay_x"], dtype=np.float32)
        rg = np.asarray(state["replay_g"], dtype=np.float64)
        if rx.shape != (len(rg), self.dim) or len(rg) > self.replay_size:
            raise ValueError(f"the saved scorer replay of shape {rx.shape} does not fit {self.dim} context columns "
                             f"and --scheduler.cbs.replay_size={self.replay_size}")
        self.replay_x[: len(rg)] = rx
        self.replay_g[: len(rg)] = rg
        self.replay_count = int(state["replay_count"])
        self.x_mean = np.asarray(state["x_mean"], dtype=np.float64)
        self.x_scale = np.asarray(state["x_scale"], dtype=np.float64)
        self.gain_scale = float(state["gain_scale"])
        self.a_inv = np.asarray(state["a_inv"], dtype=np.float64)
        self.theta = np.asarray(state["theta"], dtype=np.float64)
        self.last_loss = float(state["last_loss"])
        self._refresh_fast_path()
