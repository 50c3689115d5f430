"""``pilot_commit``: pilot a pool of prompts cheaply, commit the full group only where it pays.

Method of "Spend Your Rollouts Where It Counts" (Kim et al., arXiv 2605.26606; see
docs/pilot_commit.md for what comes from the paper and what is ours). Per cycle of
:func:`openrlhf_cero.allocators.step_loop.run_step`:

1. ``plan``: ``n_pilot`` rollouts for every prompt of the pool (``pool_factor`` times the
   groups the budget still holds, more when the recent in-band share is low and
   ``adaptive_pool`` is on), none for prompts evicted earlier.
2. ``extend``: the pilot mean p decides. ``band_low <= p <= band_high``: in band, commit
   ``n - n_pilot`` more rollouts (pilot and commit form ONE group of n), as many prompts as
   the budget holds, in pool order; in-band prompts beyond that are surplus and wait one
   cycle in the queue. ``p < band_low``: too hard, deferred (queued, offered again after
   ``defer_delay`` cycles through :meth:`PilotCommitAllocator.requeue`). ``p > band_high``:
   too easy, skipped this time; and once a prompt has been solved in ``eviction_threshold``
   pilot rollouts in a row (one all-correct pilot of 16 in the paper; several visits with
   a smaller pilot), it is evicted from every later epoch.
3. ``finish``: the committed groups train; the evicted set, the queue and the counters
   are updated. The pilot rollouts of skipped prompts are drawn but not trained; they
   count in ``rollouts_drawn`` (the cost the paper compares).

``run_step`` refills with more prompts until the budget is committed, at most
``max_rounds`` cycles. If the budget is still not committed then (or the data ends
first), the step falls back on the prompts it piloted but skipped (``_fallback_order``):
mixed pilots first, then by distance of the pilot mean from the band, each committed to
a full group of n; prompts offered but never piloted (evicted) come last, with n fresh
rollouts. The step trains them with a warning and the metric ``fallback_groups``; it
never stops the run. Decisions use no randomness: the same rewards give the same
decisions, also after ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator
from openrlhf_cero.allocators.pilot_queue import DeferredQueue
from openrlhf_cero.allocators.registry import register_allocator

# Verdicts of one cycle, per prompt of the pool.
NOT_PILOTED = -1  # evicted earlier, a duplicate in the pool, or no budget for a group
IN_BAND = 0
TOO_EASY = 1
TOO_HARD = 2
SOLVED = 3  # all-correct pilots reached the eviction threshold: evicted

# Share of a pool that re-offered (queued) prompts may take, so fresh data keeps flowing.
REQUEUE_SHARE = 0.5

# With ``adaptive_pool``, the pool grows to at most this multiple of ``pool_factor``.
MAX_POOL_GROWTH = 8.0
# Weight of the previous cycles in the in-band share that sizes adaptive pools.
YIELD_DECAY = 0.8

# Slack for band edges: a pilot mean of exactly 0.125 or 0.75 is in band despite float noise.
_EDGE = 1e-9

_FLAG = "--allocator.pilot_commit."


def classify_pilots(means: np.ndarray, band_low: float, band_high: float) -> np.ndarray:
    """Verdict per pilot mean; the band is closed on both sides, as in the paper."""
    verdicts = np.full(means.shape, IN_BAND, dtype=np.int8)
    verdicts[means > band_high + _EDGE] = TOO_EASY
    verdicts[means < band_low - _EDGE] = TOO_HARD
    return verdicts


@register_allocator
class PilotCommitAllocator(RolloutAllocator):
    name = "pilot_commit"
    skips_prompts = True  # out-of-band pilots are not trained
    options = (
        OptionSpec("n_pilot", int, 0, "pilot rollouts per prompt; 0 = a quarter of --rollout.n_samples_per_prompt "
                   "(the paper's 16 of 64), at least 4 (at most n)"),
        OptionSpec("band_low", float, 0.125, "commit only if the pilot mean is >= this; below: too hard, deferred"),
        OptionSpec("band_high", float, 0.75, "commit only if the pilot mean is <= this; above: too easy, skipped"),
        OptionSpec("pool_factor", float, 2.0, "prompts piloted per group the step still needs (the minimum, "
                   "when adaptive_pool is on)"),
        OptionSpec("adaptive_pool", bool, True, "grow the pool to 1 / (recent in-band share) groups when that "
                   "exceeds pool_factor (at most 8x), so a step rarely needs many cycles"),
        OptionSpec("eviction_threshold", int, 16, "evict a prompt from later epochs once this many of its pilot "
                   "rollouts in a row (over one or more visits) were all correct; 16 = the paper's one all-correct "
                   "pilot of 16; 0 = never evict"),
        OptionSpec("max_rounds", int, 16, "pilot/commit cycles per training step; if the step is still not full "
                   "then, it trains the best skipped prompts instead (fallback, with a warning and "
                   "allocator/fallback_groups)"),
        OptionSpec("defer_delay", int, 4, "cycles a too-hard prompt waits before it is offered again"),
        OptionSpec("max_defers", int, 2, "times in a row a prompt is deferred before it waits for the next epoch"),
    )

    def __init__(
        self,
        *,
        n_pilot: int = 0,
        band_low: float = 0.125,
        band_high: float = 0.75,
        pool_factor: float = 2.0,
        adaptive_pool: bool = True,
        eviction_threshold: int = 16,
        max_rounds: int = 16,
        defer_delay: int = 4,
        max_defers: int = 2,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        n = self.n_samples_per_prompt
        self.n_pilot = int(n_pilot) if n_pilot else min(n, max(4, n // 4))
        self.band_low = float(band_low)
        self.band_high = float(band_high)
        self.pool_factor = float(pool_factor)
        self.adaptive_pool = bool(adaptive_pool)
        self.eviction_threshold = int(eviction_threshold)
        self.max_rounds = int(max_rounds)
        self.defer_delay = int(defer_delay)
        self.max_defers = int(max_defers)
        self._validate()
        self.max_cycles = self.max_rounds  # read by step_loop.run_step
        self.fallback_hint = (
            f"Pilot-Commit trains a prompt when its pilot mean lies in [{self.band_low:g}, {self.band_high:g}]; if "
            "this repeats, the data has few prompts of medium difficulty left for this policy (see "
            "allocator/pilot_too_easy, pilot_too_hard, evicted_prompts): widen "
            f"{_FLAG}band_low/band_high, raise {_FLAG}max_rounds (now {self.max_rounds}) or {_FLAG}pool_factor "
            f"(now {self.pool_factor:g}), change the data, or stop the run"
        )
        self._evicted = np.zeros(0, dtype=np.uint64)  # sorted
        self._queue = DeferredQueue()
        self._streak: dict[int, int] = {}  # prompt id -> correct pilot rollouts in a row (only while > 0)
        self._totals = _Counts()
        self._step_counts = _Counts()
        self._yield = (0.0, 0.0)  # decayed (prompts offered, prompts in band) over recent cycles
        self._reset_cycle(0)

    # ── the contract ──

    def prompts_wanted(self, budget: int) -> int:
        groups = int(budget) // self.n_samples_per_prompt
        return math.ceil(self.pool_multiple() * groups) if groups else 0

    def pool_multiple(self) -> float:
        """Prompts offered per group needed: ``pool_factor``, or with ``adaptive_pool`` the
        inverse of the recent in-band share when that is larger (capped), so that one cycle
        usually fills the step and surplus stays small."""
        offered, in_band = self._yield
        if not self.adaptive_pool or offered <= 0:
            return self.pool_factor
        share = max(in_band / offered, 1.0 / (MAX_POOL_GROWTH * self.pool_factor))
        return max(self.pool_factor, 1.0 / share)

    def requeue(self, pool_size: int) -> np.ndarray:
        """Ids of queued prompts (deferred or surplus) the caller should put in the next pool,
        ahead of fresh prompts: at most half of ``pool_size``, only those due. Optional for
        the caller: one that never asks only loses the retries, since every prompt comes back
        with the dataloader's next epoch anyway."""
        limit = math.ceil(REQUEUE_SHARE * max(int(pool_size), 0))
        return np.array(self._queue.take_due(self.steps, limit), dtype=np.uint64)

    def queued_ids(self) -> np.ndarray:
        """Every prompt the queue may still hand back (waiting or handed out awaiting its
        verdict): a caller that keeps prompt texts for ``requeue`` can drop all others."""
        return np.array(self._queue.ids(), dtype=np.uint64)

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        self._reset_cycle(prompt_ids.size)
        self._ids = prompt_ids
        self._slots = budget // self.n_samples_per_prompt
        self._queue.mark_out(prompt_ids.tolist())
        first = np.zeros(prompt_ids.size, dtype=bool)
        first[np.unique(prompt_ids, return_index=True)[1]] = True
        self._already_evicted = self.is_evicted(prompt_ids) & first
        self._piloted = first & ~self._already_evicted & (self._slots > 0)
        return np.where(self._piloted, self.n_pilot, 0)

    def _extend(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        self._rounds += 1
        if self._rounds > 1:
            return np.zeros(prompt_ids.size, dtype=np.int64)  # the commit round was the last
        self._decide(scores)
        return np.where(self._committed, self.n_samples_per_prompt - self.n_pilot, 0)

    def _finish(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        if self._rounds == 0:  # no rollouts at all (all evicted) or a caller that skipped extend
            self._decide(scores)
            self._committed[:] = False
        self._update_memory(prompt_ids)
        self._count_cycle()
        return self._committed.copy()

    # ── fallback (step_loop.run_step, when the budget cannot be committed) ──

    def _fallback(self, prompt_ids: np.ndarray, scores: list[np.ndarray], budget: int) -> np.ndarray:
        drawn = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
        order = self._fallback_order(prompt_ids, scores)
        return self.fallback_sizes(prompt_ids, drawn, order, budget, shrink=False)  # whole groups of n

    def _fallback_order(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        """Piloted prompts first: mixed pilots (some reward differs, so the group already
        has a gradient) before constant ones, then by the distance of the pilot mean from
        the band (surplus in-band prompts first), then in the order offered. Prompts offered
        but not piloted (evicted, or a repeat) come last, in the order offered."""
        drawn = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
        piloted = np.flatnonzero(drawn > 0)
        if not piloted.size:
            return np.flatnonzero(drawn == 0)
        flat = np.concatenate(scores)
        starts = (np.cumsum(drawn) - drawn)[piloted]  # prompts without rollouts add no elements
        means = np.add.reduceat(flat, starts) / drawn[piloted]
        constant = np.minimum.reduceat(flat, starts) == np.maximum.reduceat(flat, starts)
        distance = np.maximum(np.maximum(self.band_low - means, means - self.band_high), 0.0)
        ranked = piloted[np.lexsort((piloted, distance, constant))]
        return np.concatenate([ranked, np.flatnonzero(drawn == 0)])

    def _finish_fallback(self, prompt_ids: np.ndarray, scores: list[np.ndarray], added: np.ndarray) -> None:
        """Prompts trained by the fallback leave the queue, and their pilots no longer count
        as skipped."""
        self._queue.forget_all(prompt_ids.tolist())
        pilots = int(sum(len(s) for s in scores) - added.sum())
        self._step_counts.add({"pilot_rollouts_skipped": -pilots})
        self._totals.add({"pilot_rollouts_skipped": -pilots})

    # ── decisions ──

    def _decide(self, scores: list[np.ndarray]) -> None:
        piloted = np.flatnonzero(self._piloted)
        # Called after the pilot round only: piloted prompts hold n_pilot scores, the rest none.
        flat = np.concatenate(scores) if scores else np.zeros(0)
        means = flat.reshape(piloted.size, self.n_pilot).mean(axis=1)
        self._verdicts[piloted] = classify_pilots(means, self.band_low, self.band_high)
        self._streaks[piloted] = self._correct_streaks(self._ids[piloted], means)
        if self.eviction_threshold:
            self._verdicts[self._streaks >= self.eviction_threshold] = SOLVED
        in_band = np.flatnonzero(self._verdicts == IN_BAND)
        self._committed[in_band[: self._slots]] = True
        self._surplus[in_band[self._slots :]] = True

    def _correct_streaks(self, prompt_ids: np.ndarray, means: np.ndarray) -> np.ndarray:
        """Correct pilot rollouts in a row, this pilot included: an all-correct pilot adds
        n_pilot to the prompt's streak, any failure resets it."""
        streaks = np.zeros(means.size, dtype=np.int64)
        for i in np.flatnonzero(means >= 1.0 - _EDGE).tolist():
            streaks[i] = self._streak.get(int(prompt_ids[i]), 0) + self.n_pilot
        return streaks

    def _update_memory(self, prompt_ids: np.ndarray) -> None:
        now = self.steps
        if self._slots == 0:  # nothing could be piloted: queued prompts keep their place
            for pid in prompt_ids[~self._already_evicted].tolist():
                self._queue.put_back(pid, now + 1)
            return
        solved = prompt_ids[self._verdicts == SOLVED]
        if solved.size:
            self._evicted = np.union1d(self._evicted, solved)
        piloted = self._verdicts != NOT_PILOTED
        on_streak = piloted & (self._streaks > 0) & (self._verdicts != SOLVED)
        for pid, streak in zip(prompt_ids[on_streak].tolist(), self._streaks[on_streak].tolist()):
            self._streak[pid] = streak
        for pid in prompt_ids[piloted & ~on_streak].tolist():
            self._streak.pop(pid, None)
        for pid in prompt_ids[self._verdicts == TOO_HARD].tolist():
            times = self._queue.times_deferred(pid) + 1
            if times <= self.max_defers:
                self._queue.wait(pid, now + self.defer_delay, times)
            else:
                self._queue.forget(pid)  # back with the next epoch, with a fresh count
        for pid in prompt_ids[self._surplus].tolist():
            self._queue.wait(pid, now + 1, self._queue.times_deferred(pid))
        settled = (self._verdicts != NOT_PILOTED) & (self._verdicts != TOO_HARD) & ~self._surplus
        self._queue.forget_all(prompt_ids[settled].tolist())

    def is_evicted(self, prompt_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(prompt_ids, dtype=np.uint64)
        if not self._evicted.size:
            return np.zeros(ids.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self._evicted, ids), self._evicted.size - 1)
        return self._evicted[pos] == ids

    # ── bookkeeping ──

    def _reset_cycle(self, size: int) -> None:
        self._slots = 0
        self._rounds = 0
        self._piloted = np.zeros(size, dtype=bool)
        self._already_evicted = np.zeros(size, dtype=bool)
        self._verdicts = np.full(size, NOT_PILOTED, dtype=np.int8)
        self._committed = np.zeros(size, dtype=bool)
        self._surplus = np.zeros(size, dtype=bool)
        self._streaks = np.zeros(size, dtype=np.int64)
        self._ids = np.zeros(size, dtype=np.uint64)

    def _count_cycle(self) -> None:
        v = self._verdicts
        figures = {
            "pilot_prompts": int(self._piloted.sum()),
            "pilot_pass": int(self._committed.sum()),
            "pilot_surplus": int(self._surplus.sum()),
            "pilot_too_easy": int((v == TOO_EASY).sum()),
            "pilot_too_hard": int((v == TOO_HARD).sum()),
            "pilot_newly_evicted": int((v == SOLVED).sum()),
            "pilot_skipped_evicted": int(self._already_evicted.sum()),
            "pilot_rollouts": int(self._piloted.sum()) * self.n_pilot,
            "pilot_rollouts_skipped": int((self._piloted & ~self._committed).sum()) * self.n_pilot,
        }
        self._step_counts.add(figures)
        self._totals.add(figures)
        offered = figures["pilot_prompts"] + figures["pilot_skipped_evicted"]
        if offered:
            in_band = figures["pilot_pass"] + figures["pilot_surplus"]
            self._yield = (YIELD_DECAY * self._yield[0] + offered, YIELD_DECAY * self._yield[1] + in_band)

    def _extra_metrics(self) -> dict[str, float]:
        step = self._step_counts.values
        figures = {name: float(value) for name, value in step.items()}
        piloted = step.get("pilot_prompts", 0)
        figures["pilot_in_band_share"] = (step.get("pilot_pass", 0) + step.get("pilot_surplus", 0)) / piloted if piloted else 0.0
        figures["pilot_rollouts_skipped_total"] = float(self._totals.values.get("pilot_rollouts_skipped", 0))
        figures["pilot_pool_multiple"] = self.pool_multiple()
        figures["evicted_prompts"] = float(self._evicted.size)
        figures["deferred_waiting"] = float(self._queue.waiting())
        self._step_counts = _Counts()
        return figures

    def _settings(self) -> dict[str, Any]:
        settings = super()._settings()
        settings.update({spec.name: getattr(self, spec.name) for spec in self.options})
        return settings

    def _state(self) -> dict[str, Any]:
        return {
            "evicted": [int(pid) for pid in self._evicted],
            "queue": self._queue.state(),
            "streaks": [[pid, streak] for pid, streak in self._streak.items()],
            "totals": dict(self._totals.values),
            "yield": list(self._yield),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self._evicted = np.unique(np.array([int(pid) for pid in state["evicted"]], dtype=np.uint64))
        self._queue.load_state(state["queue"])
        self._streak = {int(pid): int(streak) for pid, streak in state["streaks"]}
        self._totals = _Counts(state["totals"])
        self._yield = (float(state["yield"][0]), float(state["yield"][1]))
        self._step_counts = _Counts()
        self._reset_cycle(0)

    def _validate(self) -> None:
        n = self.n_samples_per_prompt
        if not 1 <= self.n_pilot <= n:
            raise AllocatorError(
                f"{_FLAG}n_pilot={self.n_pilot} must lie in [1, --rollout.n_samples_per_prompt={n}] "
                "(or 0 for a quarter of n)"
            )
        if not 0.0 <= self.band_low <= self.band_high <= 1.0:
            raise AllocatorError(
                f"{_FLAG}band_low={self.band_low:g} and {_FLAG}band_high={self.band_high:g} must satisfy "
                "0 <= band_low <= band_high <= 1"
            )
        if self.eviction_threshold < 0:
            raise AllocatorError(
                f"{_FLAG}eviction_threshold={self.eviction_threshold} must be >= 0 (correct pilot rollouts in a "
                "row before eviction; 0 never evicts)"
            )
        if not math.isfinite(self.pool_factor) or self.pool_factor < 1.0:
            raise AllocatorError(f"{_FLAG}pool_factor={self.pool_factor:g} must be a finite number >= 1")
        for flag, value in (("max_rounds", self.max_rounds), ("defer_delay", self.defer_delay)):
            if value < 1:
                raise AllocatorError(f"{_FLAG}{flag}={value} must be >= 1")
        if self.max_defers < 0:
            raise AllocatorError(f"{_FLAG}max_defers={self.max_defers} must be >= 0 (0: never re-offer)")
        means = np.arange(self.n_pilot + 1) / self.n_pilot
        if not (classify_pilots(means, self.band_low, self.band_high) == IN_BAND).any():
            raise AllocatorError(
                f"no pilot outcome k/{self.n_pilot} lies in the band [{self.band_low:g}, {self.band_high:g}], so no "
                f"prompt could ever be committed; raise {_FLAG}n_pilot or widen {_FLAG}band_low/band_high"
            )


class _Counts:
    """Named integer counters (one step's, or the run's)."""

    def __init__(self, values: dict[str, int] | None = None) -> None:
        self.values: dict[str, int] = {k: int(v) for k, v in (values or {}).items()}

    def add(self, figures: dict[str, int]) -> None:
        for name, value in figures.items():
            self.values[name] = self.values.get(name, 0) + value
