"""``cbs``: a Contextual Rollout Bandit scheduler (after arXiv 2602.08499; docs/cbs.md).

Each rollout is an arm. Its context (context.py) is scored by a neural UCB (scorer.py);
the step trains on the ``train_size`` rollouts of highest noise-weighted UCB among the
fresh ones and, up to ``max_reuse_share`` of the batch, buffered ones from earlier steps
(selection.py); what is not trained now, or still worth training again, waits in a
bounded buffer no older than ``max_staleness`` steps (buffer.py). The bandit reward of
a trained rollout, reported through ``feedback``, is its gain (base.py, docs/cbs.md).

Until the scorer has feedback, and for the first ``warmup_steps`` steps, the scheduler
trains exactly the fresh rollouts: it is the identity, and training equals stock.

``ranking="advantage"`` is the no-learning ablation: after ``warmup_steps`` it ranks by the
warm-up's rule (noise-weighted |advantage| discounted by age) under the same buffer, caps and
sign balance, and never consults or trains the scorer; it measures how much of CBS's gain is
reuse of nonzero-advantage rollouts rather than the bandit's choice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from openrlhf_cero.schedulers.base import STATE_VERSION, RolloutScheduler, RolloutTable, SchedulerError, Selection
from openrlhf_cero.schedulers.cbs.buffer import RolloutBuffer, concat_records
from openrlhf_cero.schedulers.cbs.context import CONTEXT_DIM, context_matrix, fresh_records, reliability
from openrlhf_cero.schedulers.cbs.options import FLAG, OPTIONS, RANKINGS, check_option
from openrlhf_cero.schedulers.cbs.posterior import BetaTable
from openrlhf_cero.schedulers.cbs.scorer import NeuralUCBScorer
from openrlhf_cero.schedulers.cbs.selection import balance_signs, eligible_rows, top_k

# What ``metrics()`` reports (docs/cbs.md, "Options"): the step's figures, then the last feedback's.
METRICS = ("reuse_share", "mean_staleness", "selected_share", "buffer_size", "exploration_bonus", "sign_swaps",
           "warmup", "bandit_reward", "bandit_reward_sum", "scorer_loss", "replay_size")
_LENGTH_DECAY = 0.9  # running mean of response length: weight of the past per step


class ContextualBanditScheduler(RolloutScheduler):
    name = "cbs"
    options = OPTIONS

    def __init__(
        self,
        *,
        seed: int = 0,
        buffer_size: int = 1024,
        max_staleness: int = 4,
        max_reuse_share: float = 0.25,
        exploration: float = 1.0,
        hidden: int = 32,
        lr: float = 1e-3,
        train_steps: int = 8,
        scorer_batch: int = 256,
        replay_size: int = 4096,
        ridge: float = 1.0,
        noise_z: float = 1.0,
        sign_balance: bool = True,
        warmup_steps: int = 2,
        prompt_table_size: int = 65536,
        ranking: str = "bandit",
    ) -> None:
        super().__init__(seed=seed)
        self.buffer_size = check_option("buffer_size", buffer_size, int, lambda v: v >= 1, ">= 1 (rollouts the buffer holds)")
        self.max_staleness = check_option("max_staleness", max_staleness, int, lambda v: v >= 1,
                                     ">= 1 (steps; age 1 = drawn in the step before, 0 would forbid every reuse)")
        self.max_reuse_share = check_option("max_reuse_share", max_reuse_share, float, lambda v: 0 <= v <= 1, "in [0, 1]")
        self.exploration = check_option("exploration", exploration, float, lambda v: v >= 0, ">= 0")
        self.hidden = check_option("hidden", hidden, int, lambda v: 2 <= v <= 1024, "in [2, 1024]")
        self.lr = check_option("lr", lr, float, lambda v: v > 0, "> 0")
        self.train_steps = check_option("train_steps", train_steps, int, lambda v: v >= 0, ">= 0")
        self.scorer_batch = check_option("scorer_batch", scorer_batch, int, lambda v: v >= 1, ">= 1")
        self.replay_size = check_option("replay_size", replay_size, int, lambda v: v >= 1, ">= 1")
        self.ridge = check_option("ridge", ridge, float, lambda v: v > 0, "> 0")
        self.noise_z = check_option("noise_z", noise_z, float, lambda v: v >= 0, ">= 0")
        if not isinstance(sign_balance, (bool, np.bool_)):
            raise SchedulerError(f"{FLAG}sign_balance={sign_balance!r} must be true or false")
        self.sign_balance = bool(sign_balance)
        self.warmup_steps = check_option("warmup_steps", warmup_steps, int, lambda v: v >= 0, ">= 0")
        self.prompt_table_size = check_option("prompt_table_size", prompt_table_size, int, lambda v: v >= 1, ">= 1")
        self.ranking = check_option("ranking", ranking, str, lambda v: v in RANKINGS,
                                    f"one of {', '.join(RANKINGS)}")
        self.buffer = RolloutBuffer(self.buffer_size, self.max_staleness)
        self.posterior = BetaTable(self.prompt_table_size)
        self.scorer = NeuralUCBScorer(
            CONTEXT_DIM, hidden=self.hidden, lr=self.lr, ridge=self.ridge, replay_size=self.replay_size,
            batch_size=self.scorer_batch, train_steps=self.train_steps, seed=self.seed,
        )
        self.steps = 0
        self.next_id = 0
        self.next_group_uid = 0
        self.length_mean = 0.0
        self._pending_ids = np.zeros(0, dtype=np.int64)  # trained last step, sorted; awaiting feedback
        self._pending_x = np.zeros((0, CONTEXT_DIM), dtype=np.float32)
        self._figures: dict[str, float] = {}
        self._feedback_figures: dict[str, float] = {}

    # ── select ──

    def select(self, fresh: RolloutTable, train_size: int) -> Selection:
        if not isinstance(fresh, RolloutTable):
            raise SchedulerError(f"select expects a RolloutTable, got {type(fresh).__name__}")
        try:
            whole = int(train_size) == train_size and train_size >= 0
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise SchedulerError(f"train_size must be a whole number >= 0, got {train_size!r}")
        train_size, step, n = int(train_size), self.steps, len(fresh)
        records = fresh_records(fresh, self.next_id, self.next_group_uid, step)
        self.posterior.update(records["prompt_id"], records["reward"], step)
        if n:
            now = float(records["length"].mean())
            self.length_mean = now if self.length_mean <= 0 else (
                _LENGTH_DECAY * self.length_mean + (1 - _LENGTH_DECAY) * now)
        pool = concat_records(records, self.buffer.records)  # fresh rows first
        x = self._context(pool, records, step)
        age = step - pool["step_drawn"]
        weight = reliability(pool["advantage"], pool["adv_noise"], self.noise_z)
        learned = self.ranking == "bandit"
        warm = step < self.warmup_steps or (learned and not self.scorer.trained)
        swaps, width = 0, np.zeros(age.size)
        if warm or not learned:  # the warm-up's rule (and the ablation's ranking)
            score = weight * np.abs(pool["advantage"]) / (1.0 + age)
        if warm:  # the identity: fresh rows in order; the buffer only fills a batch larger than them
            chosen = np.zeros(age.size, dtype=bool)
            chosen[: min(train_size, n)] = True
            buffered = eligible_rows(n, score, train_size - n) & (np.arange(age.size) >= n)
            chosen |= top_k(score, buffered, max(train_size - n, 0))
        else:
            if learned:
                mean, width = self.scorer.ucb(x)
                score = weight * (mean + self.exploration * width)
            cap = max(int(math.floor(self.max_reuse_share * train_size)), train_size - n)
            eligible = eligible_rows(n, score, cap)
            chosen = top_k(score, eligible, train_size)
            if self.sign_balance and chosen.any():
                group = pool["group_uid"] - pool["group_uid"].min()  # spans max_staleness + 1 steps
                chosen, swaps = balance_signs(chosen, eligible, score, group, pool["advantage"])
        train_fresh = np.flatnonzero(chosen[:n])
        reused_rows = n + np.flatnonzero(chosen[n:])
        trained_rows = np.concatenate([train_fresh, reused_rows])
        pool["times_trained"][trained_rows] += 1
        order = np.argsort(pool["id"][trained_rows], kind="stable")
        self._pending_ids = pool["id"][trained_rows][order]
        self._pending_x = x[trained_rows][order]
        # A caller that never reports gains gets the identity forever: then keep nothing (its
        # payloads would be held for no use) once a step has passed without any feedback.
        # The ablation needs no feedback to leave the identity, so it always keeps.
        keeping = self.scorer.trained or step == 0 or not learned
        self.buffer.refill(pool, (pool["advantage"] != 0) & keeping, score, step)
        selection = Selection(
            fresh_ids=records["id"],
            train_fresh=train_fresh.astype(np.int64),
            train_reused=pool["id"][reused_rows],
            kept=self.buffer.ids.copy(),
            figures=self._step_figures(n, trained_rows, reused_rows, age, width, swaps, warm),
        )
        self.steps += 1
        self.next_id += n
        if n:
            self.next_group_uid = int(records["group_uid"][-1]) + 1
        return selection

    def _context(self, pool: dict[str, np.ndarray], records: dict[str, np.ndarray], step: int) -> np.ndarray:
        """The pool's raw context; the prompt posterior is looked up once per fresh group
        (its rows share the prompt) and once per buffered rollout."""
        n = records["id"].size
        starts = np.flatnonzero(np.r_[True, np.diff(records["group_uid"]) != 0]) if n else np.zeros(0, np.int64)
        looked = np.concatenate([records["prompt_id"][starts], self.buffer.records["prompt_id"]])
        mean_at, var_at = self.posterior.posterior(looked)
        row_of = np.concatenate([np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n])),
                                 starts.size + np.arange(len(self.buffer))]).astype(np.int64)
        return context_matrix(pool, step, self.length_mean, mean_at[row_of], var_at[row_of])

    def _step_figures(self, n: int, trained: np.ndarray, reused: np.ndarray, age: np.ndarray, width: np.ndarray,
                      swaps: int, warm: bool) -> dict[str, float]:
        size = trained.size
        self._figures = {
            "reuse_share": reused.size / size if size else 0.0,
            "mean_staleness": float(age[trained].mean()) if size else 0.0,
            "selected_share": (size - reused.size) / n if n else 0.0,
            "buffer_size": float(len(self.buffer)),
            "exploration_bonus": float(width[trained].mean()) if size else 0.0,
            "sign_swaps": float(swaps),
            "warmup": float(warm),
        }
        return dict(self._figures)

    # ── feedback ──

    def feedback(self, rollout_ids: np.ndarray, gains: np.ndarray) -> None:
        ids = np.asarray(rollout_ids).reshape(-1)
        gains = np.asarray(gains, dtype=np.float64).reshape(-1)
        if ids.size != gains.size:
            raise SchedulerError(f"feedback got {ids.size} rollout ids but {gains.size} gains")
        if ids.size and ids.dtype.kind not in "iu":
            raise SchedulerError(f"feedback rollout ids must be integers (Selection.trained_ids()), got {ids.dtype}")
        bad = np.flatnonzero(~np.isfinite(gains))
        if bad.size:
            raise SchedulerError(
                f"feedback gain is not finite (NaN or inf) for rollout ids {ids[bad[:8]].tolist()}: the gain is "
                "advantage * mean(log pi_after - log pi_before) over the rollout's tokens (docs/cbs.md)"
            )
        if not ids.size:
            return
        ids = ids.astype(np.int64)
        if np.unique(ids).size != ids.size:
            raise SchedulerError("feedback names a rollout id twice")
        pos = np.minimum(np.searchsorted(self._pending_ids, ids), max(self._pending_ids.size - 1, 0))
        known = (pos < self._pending_ids.size) & (self._pending_ids[pos] == ids) if self._pending_ids.size else (
            np.zeros(ids.size, dtype=bool))
        if not known.all():
            raise SchedulerError(
                f"feedback for rollout ids {ids[~known][:8].tolist()} that the last select did not train (or that "
                "already had feedback): report gains of Selection.trained_ids() after each step's update"
            )
        if self.ranking == "bandit":  # the ablation records the gains but learns nothing from them
            self.scorer.observe(self._pending_x[pos], gains)
        keep = np.ones(self._pending_ids.size, dtype=bool)
        keep[pos] = False
        self._pending_ids, self._pending_x = self._pending_ids[keep], self._pending_x[keep]
        self._feedback_figures = {
            "bandit_reward": float(gains.mean()),
            "bandit_reward_sum": float(gains.sum()),
            "scorer_loss": self.scorer.last_loss if math.isfinite(self.scorer.last_loss) else 0.0,
            "replay_size": float(min(self.scorer.replay_count, self.replay_size)),
        }

    def metrics(self) -> dict[str, float]:
        figures = dict.fromkeys(METRICS, 0.0)  # the same keys every step, before any select or feedback too
        figures["buffer_size"] = float(len(self.buffer))
        figures.update(self._figures)
        figures.update(self._feedback_figures)
        return figures

    # ── state ──

    def _settings(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in self.options} | {"seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.name,
            "version": STATE_VERSION,
            "settings": self._settings(),
            "steps": self.steps,
            "next_id": self.next_id,
            "next_group_uid": self.next_group_uid,
            "length_mean": self.length_mean,
            "buffer": self.buffer.state(),
            "posterior": self.posterior.state(),
            "scorer": self.scorer.state(),
            "pending_ids": self._pending_ids.copy(),
            "pending_x": self._pending_x.copy(),
            "figures": dict(self._figures),
            "feedback_figures": dict(self._feedback_figures),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("scheduler") != self.name:
            saved = state.get("scheduler") if isinstance(state, dict) else None
            raise SchedulerError(
                f"checkpoint holds state of scheduler {saved!r}, but --rollout_scheduler is {self.name!r}; resume "
                f"with --rollout_scheduler {saved} or start a new run"
            )
        if state.get("version") != STATE_VERSION:
            raise SchedulerError(f"scheduler state version {state.get('version')} is not supported "
                                 f"(expected {STATE_VERSION})")
        saved_hidden = state.get("settings", {}).get("hidden", self.hidden)
        if saved_hidden != self.hidden:
            raise SchedulerError(
                f"the checkpoint's scorer has {FLAG}hidden={saved_hidden} but this run {self.hidden}; resume with "
                f"{FLAG}hidden {saved_hidden}"
            )
        before = self.state_dict()
        try:
            self._restore(state)
        except Exception as error:  # whatever a damaged or mismatched state breaks: all or nothing
            self._restore(before)
            raise SchedulerError(
                f"the saved state of scheduler {self.name} does not load ({type(error).__name__}: {error})"
            ) from error

    def _restore(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.next_id = int(state["next_id"])
        self.next_group_uid = int(state["next_group_uid"])
        self.length_mean = float(state["length_mean"])
        self.buffer.load(state["buffer"])
        self.posterior.load(state["posterior"])
        self.scorer.load(state["scorer"])
        self._pending_ids = np.asarray(state["pending_ids"], dtype=np.int64)
        self._pending_x = np.asarray(state["pending_x"], dtype=np.float32).reshape(-1, CONTEXT_DIM)
        self._figures = dict(state["figures"])
        self._feedback_figures = dict(state["feedback_figures"])
