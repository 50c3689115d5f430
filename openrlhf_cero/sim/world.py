"""The simulated policy: latent pass rates of every prompt and how training moves them.

Each prompt has a latent logit theta (pass rate p = sigmoid(theta)) and a topic. A
training step moves logits by the gradient signal of the groups it trained
(:mod:`openrlhf_cero.sim.signal`):

- own prompt: theta_i += lr_self * S_i
- its topic: theta_j += lr_cluster * (sum of S over the step's groups of topic c) / (batch_size / clusters)
- everything: theta_j += lr_global * (sum of S over the step's groups) / batch_size
- drift: theta_j += N(0, drift_sd^2 / steps_per_epoch) every step

so zero-variance groups teach nothing, more rollouts in a group give a steadier signal,
and prompts never visited still move (transfer), as held-out accuracy does in RLVR.
Unsolvable prompts keep p = 0. Held-out (eval) prompts share the topics but are never
trained on. Random streams are split per purpose so two allocators run with the same
seed see the same dataset and the same shuffles.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from openrlhf_cero.allocators.ids import prompt_id
from openrlhf_cero.sim.scenario import Scenario
from openrlhf_cero.sim.signal import group_signal

_P_FLOOR = 1e-6  # Beta draws below this start at this pass rate (logit -13.8)


def initial_pass_rates(scenario: Scenario, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pass rates from the scenario's difficulty mix, and the mask of unsolvable prompts."""
    weights = np.array([c[0] for c in scenario.difficulty], dtype=np.float64)
    component = rng.choice(len(weights), size=size, p=weights / weights.sum())
    a = np.array([c[1] for c in scenario.difficulty])[component]
    b = np.array([c[2] for c in scenario.difficulty])[component]
    p = rng.beta(a, b)
    unsolvable = rng.random(size) < scenario.unsolvable_share
    p[unsolvable] = 0.0
    return p, unsolvable


class PromptWorld:
    """Latent state of the simulated run: train prompts first, then eval prompts."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        data_seq, reward_seq, drift_seq, order_seq = np.random.SeedSequence([int(seed), 0x51A]).spawn(4)
        data_rng = np.random.default_rng(data_seq)
        self.reward_rng = np.random.default_rng(reward_seq)
        self.drift_rng = np.random.default_rng(drift_seq)
        self.order_rng = np.random.default_rng(order_seq)
        total = scenario.dataset_size + scenario.eval_size
        p, self.unsolvable = initial_pass_rates(scenario, total, data_rng)
        self.theta = logit(np.clip(p, _P_FLOOR, 1.0 - _P_FLOOR))
        self.topic = data_rng.integers(0, scenario.clusters, size=total)
        self.n_train = scenario.dataset_size
        # Stable ids, as OpenRLHF would hash (prompt, label); the seed is part of the text so
        # datasets of different seeds never share ids.
        self.ids = np.array(
            [prompt_id(f"sim prompt {i} seed {seed}", f"topic {t}") for i, t in enumerate(self.topic)], dtype=np.uint64
        )
        self._index_of = {int(pid): i for i, pid in enumerate(self.ids[: self.n_train])}
        self.successes_total = np.zeros(total, dtype=np.int64)  # over every rollout drawn
        self.rollouts_drawn = 0  # every reward sampled, trained or not

    # ── reading ──

    @property
    def pass_rates(self) -> np.ndarray:
        return np.where(self.unsolvable, 0.0, expit(self.theta))

    def pass_rates_of(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Latent pass rates by prompt id (what only the oracle may see)."""
        idx = np.fromiter((self._index_of[int(i)] for i in prompt_ids), dtype=np.int64, count=len(prompt_ids))
        return self.pass_rates[idx]

    def mean_pass_rate(self, which: str) -> float:
        p = self.pass_rates
        return float(p[self.n_train :].mean() if which == "eval" else p[: self.n_train].mean())

    # ── data order ──

    def epoch_order(self) -> np.ndarray:
        return self.order_rng.permutation(self.n_train)

    # ── sampling ──

    def draw(self, index: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """Binary rewards: ``counts[j]`` rollouts of prompt ``index[j]`` at its current pass rate."""
        counts = np.asarray(counts, dtype=np.int64)
        p = self.pass_rates[np.asarray(index, dtype=np.int64)]
        flat = (self.reward_rng.random(int(counts.sum())) < np.repeat(p, counts)).astype(np.float64)
        self.rollouts_drawn += int(counts.sum())
        np.add.at(self.successes_total, np.repeat(np.asarray(index, dtype=np.int64), counts), flat.astype(np.int64))
        return np.split(flat, np.cumsum(counts)[:-1])

    # ── learning ──

    def train_step(self, index: np.ndarray, sizes: np.ndarray, successes: np.ndarray) -> np.ndarray:
        """Apply one step's update from its trained groups; returns each group's signal."""
        sc = self.scenario
        index = np.asarray(index, dtype=np.int64)
        signal = group_signal(sizes, successes, sc.signal)
        delta = np.zeros_like(self.theta)
        np.add.at(delta, index, sc.lr_self * signal)
        per_topic = np.bincount(self.topic[index], weights=signal, minlength=sc.clusters)
        delta += sc.lr_cluster * per_topic[self.topic] / (sc.batch_size / sc.clusters)
        delta += sc.lr_global * signal.sum() / sc.batch_size
        if sc.drift_sd > 0:
            delta += self.drift_rng.normal(0.0, sc.drift_sd / np.sqrt(sc.steps_per_epoch), size=self.theta.size)
        self.theta = self.theta + delta
        return signal
