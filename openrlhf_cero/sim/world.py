"""The simulated policy: latent pass rates of every prompt and how training moves them.

Each prompt has a latent logit theta (pass rate p = sigmoid(theta)) and a topic. A
training step follows the policy gradient of OpenRLHF's loss for a toy policy with one
logit per prompt (:mod:`openrlhf_cero.sim.signal`): trained group i gives

    G_i = batch_size * w * sum_{j in group i} A_j (r_j - p_i) / N_step

(N_step: samples the step trains, as the token-mean loss divides by them; w: OpenRLHF's
whitening factor for reinforce_baseline, else 1; batch_size: a common scale, so a uniform
step moves a prompt by its group's per-sample mean gradient). Then

- own prompt: theta_i += lr_self * G_i
- its topic: theta_j += lr_cluster * (sum of G over the step's groups of topic c) / (batch_size / clusters)
- everything: theta_j += lr_global * (sum of G over the step's groups) / batch_size
- drift: theta_j += N(0, drift_sd^2 / steps_per_epoch) every step

so zero-variance groups teach nothing, a group teaches in proportion to its size, and
prompts never visited still move (transfer), as held-out accuracy does in RLVR.
Unsolvable prompts keep p = 0. Held-out (eval) prompts share the topics but are never
trained on. Random streams are split per purpose so two allocators run with the same
seed see the same dataset and the same shuffles.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from openrlhf_cero.allocators.ids import prompt_id
from openrlhf_cero.sim.scenario import Scenario
from openrlhf_cero.sim.signal import group_gradient, whitening_factor

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
        self._sorted = np.argsort(self.ids[: self.n_train], kind="stable")  # id -> train index by binary search
        self._sorted_ids = self.ids[: self.n_train][self._sorted]
        self.successes_total = np.zeros(total, dtype=np.int64)  # over every rollout drawn
        self.rollouts_drawn = 0  # every reward sampled, trained or not
        self._square_norm_average = 0.0  # optimizer "adam": running mean of the step gradient's squared norm
        self._updates = 0

    # ── reading ──

    @property
    def pass_rates(self) -> np.ndarray:
        return np.where(self.unsolvable, 0.0, expit(self.theta))

    def index_of(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Train-prompt indices of ``prompt_ids``; KeyError for an id that is not a train prompt."""
        ids = np.asarray(prompt_ids, dtype=np.uint64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), self._sorted_ids.size - 1)
        if ids.size and not (self._sorted_ids[pos] == ids).all():
            raise KeyError(f"prompt id {int(ids[self._sorted_ids[pos] != ids][0])} is not a train prompt")
        return self._sorted[pos]

    def pass_rates_of(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Latent pass rates by prompt id (what only the oracle may see)."""
        return self.pass_rates[self.index_of(prompt_ids)]

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
        ends = np.cumsum(counts).tolist()
        return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]  # np.split, without its per-piece overhead

    # ── learning ──

    def step_gradients(self, sizes: np.ndarray, successes: np.ndarray) -> np.ndarray:
        """G_i of each trained group (module docstring): the step's gradient of OpenRLHF's loss
        on each group's logit, times the common scale batch_size."""
        sc = self.scenario
        sizes = np.asarray(sizes, dtype=np.float64)
        total = sizes.sum()
        if total <= 0:
            return np.zeros(sizes.size)
        gradient = group_gradient(sizes, successes, sc.signal) * whitening_factor(sizes, successes, sc.signal)
        # token-mean and seq-mean-token-mean both divide by the step's samples (one token each).
        return gradient * (sc.batch_size / total)

    def train_step(self, index: np.ndarray, sizes: np.ndarray, successes: np.ndarray) -> np.ndarray:
        """Apply one step's update from its trained groups; returns each group's G_i."""
        gradient = self.step_gradients(sizes, successes)
        return self.apply_gradients(index, gradient)[0]

    def apply_gradients(self, index: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move the logits by one step whose trained groups on prompts ``index`` have the scaled
        gradients ``gradient`` (G_i, the module docstring), then drift.

        Returns the gradients as applied (after the ``adam`` normalisation) and the update's own
        change of every logit, drift excluded: the scheduled trainer (sim/scheduled.py) measures
        what training did to each rollout's log-probability from it, and drift is the same
        whichever rollouts trained."""
        sc = self.scenario
        index = np.asarray(index, dtype=np.int64)
        gradient = np.asarray(gradient, dtype=np.float64)
        if sc.optimizer == "adam":
            gradient = self._normalised(gradient)
        delta = np.zeros_like(self.theta)
        np.add.at(delta, index, sc.lr_self * gradient)
        per_topic = np.bincount(self.topic[index], weights=gradient, minlength=sc.clusters)
        delta += sc.lr_cluster * per_topic[self.topic] / (sc.batch_size / sc.clusters)
        delta += sc.lr_global * gradient.sum() / sc.batch_size
        update = delta.copy()
        if sc.drift_sd > 0:
            delta += self.drift_rng.normal(0.0, sc.drift_sd / np.sqrt(sc.steps_per_epoch), size=self.theta.size)
        self.theta = self.theta + delta
        return gradient, update

    def _normalised(self, gradient: np.ndarray) -> np.ndarray:
        """The step's gradient over the bias-corrected running RMS of its norm (AdamW's second
        moment, for parameters every prompt shares; no momentum). Still the loss gradient up
        to one common scale per step, so the direction is the trainer's."""
        beta = self.scenario.adam_beta2
        self._updates += 1
        self._square_norm_average = beta * self._square_norm_average + (1.0 - beta) * float(gradient @ gradient)
        rms = np.sqrt(self._square_norm_average / (1.0 - beta**self._updates))
        return gradient / rms if rms > 0 else gradient

    def improvement_weights(self, prompt_ids: np.ndarray) -> np.ndarray:
        """d(objective) / d G_i for train prompts by id, to first order: how much the scenario's
        metric (mean train or held-out pass rate) rises per unit of a group's G_i, through
        its own logit, its topic and the global transfer (what only the oracle may see)."""
        sc = self.scenario
        idx = self.index_of(prompt_ids)
        p = self.pass_rates
        slope = p * (1.0 - p)  # d p / d theta; 0 for unsolvable prompts (p = 0)
        counted = np.zeros(p.size, dtype=bool)
        if sc.metric == "eval":
            counted[self.n_train :] = True
        else:
            counted[: self.n_train] = True
        slope = np.where(counted, slope, 0.0) / max(int(counted.sum()), 1)
        per_topic = np.bincount(self.topic, weights=slope, minlength=sc.clusters)
        own = sc.lr_self * slope[idx]
        topic = sc.lr_cluster * per_topic[self.topic[idx]] / (sc.batch_size / sc.clusters)
        everything = sc.lr_global * slope.sum() / sc.batch_size
        return own + topic + everything
