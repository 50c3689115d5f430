"""The allocator contract: one protocol for the OpenRLHF integration, the simulator and tests.

A training step asks an allocator how many rollouts each prompt gets, in one or more
rounds, then tells it what came back:

    counts = alloc.plan(prompt_ids, budget)          # round 1 (0 = skip the prompt)
    while counts.any():
        rewards = draw(prompt_ids, counts)            # caller generates and scores
        counts = alloc.extend(prompt_ids, rewards)    # more rollouts, or all zeros
    keep = alloc.finish(prompt_ids, rewards)          # which groups train; updates state

``budget`` is the number of rollouts the step trains on (``rollout.batch_size *
n_samples_per_prompt`` in OpenRLHF's step mode). The sizes of the kept groups never
exceed it; one-shot allocators (uniform, CERO, VIP) spend it exactly in ``plan``.
Allocators that filter (Pilot-Commit) may draw rollouts they then skip; those count in
``rollouts_drawn`` but not against ``budget``, and the caller offers more prompts
(``prompts_wanted``) until the budget is filled or the data runs out.

Rewards passed to ``extend``/``finish`` are, per prompt, every reward drawn for it in
this step so far (all rounds, in order). Prompt ids are unsigned 64-bit integers
(:func:`openrlhf_cero.allocators.ids.prompt_id`), stable across runs.

Zero prompts are valid input for every allocator: ``plan([], budget)`` returns an empty
count array for any budget >= 0, and ``extend``/``finish`` on zero prompts return empty
arrays. These calls are no-ops: they change no state, draw nothing and count no step.
A negative budget is an error whatever the prompts.

**Fallback.** An allocator never stops a run and never silently trains nothing. When a
step ends with budget left because no offered prompt qualified (the step loop's cycle
cap, ``max_cycles``, was reached, or the data ran out), the step loop
(:func:`openrlhf_cero.allocators.step_loop.run_step`) asks for a fallback among the
groups the allocator drew but did not keep this step:

    sizes = alloc.fallback(prompt_ids, rewards, budget_left)   # group size to train, 0 = not
    rewards = draw(prompt_ids, sizes - drawn)                   # top the chosen groups up
    alloc.finish_fallback(prompt_ids, rewards, sizes - drawn)   # they train; metrics, state

``fallback`` changes no state (the loop also calls it after each cycle to keep only the
candidates it would choose). The default takes prompts that already have rollouts, in
the order offered, each topped up to ``n_samples_per_prompt``; allocators rank their own
candidates (``_fallback_order``). The groups trained this way are counted in the metric
``fallback_groups``, and the step loop logs one warning for the step.

This package never imports torch, Ray or OpenRLHF: the same objects run in the
simulator, in tests, and inside OpenRLHF's Ray actors.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

STATE_VERSION = 1

# Estimators that subtract a per-prompt group baseline: a group of one has no baseline.
GROUP_ESTIMATORS = ("group_norm", "rloo", "reinforce_baseline", "dr_grpo")


class AllocatorError(ValueError):
    """Bad allocator input or settings; the message names the flag or value at fault."""


class DamagedStateError(AllocatorError):
    """A saved allocator state that cannot be decoded (cut short, edited, corrupted)."""


def as_prompt_ids(prompt_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1:
        raise AllocatorError(f"prompt_ids must be one-dimensional, got shape {ids.shape}")
    if ids.size and ids.dtype != np.uint64:
        if ids.dtype.kind not in "iu":
            raise AllocatorError(f"prompt_ids must be integers (see ids.prompt_id), got dtype {ids.dtype}")
        ids = ids.astype(np.uint64)
    return ids.astype(np.uint64, copy=False)


@dataclass(frozen=True)
class OptionSpec:
    """One allocator-specific option. The OpenRLHF integration turns it into the flag
    ``--allocator.<allocator name>.<name>`` (shown in ``--help``) and passes the value to
    the allocator's constructor as keyword ``name``; the simulator takes it from JSON/YAML."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None


class RolloutAllocator(ABC):
    """Base class: validation, bookkeeping and metrics shared by every allocator.

    Subclasses implement ``_plan``, optionally ``_extend`` and ``_finish``, and their own
    ``_state`` / ``_load_state``. The public methods wrap them so that every allocator
    obeys the same rules (bounds, NaN rewards, accounting) without repeating them.
    """

    name: ClassVar[str] = "base"
    # False only for allocators that decide without outcomes (uniform): they also run when
    # rewards come later from a reward model rather than at generation time.
    needs_rewards: ClassVar[bool] = True
    # Allocator-specific constructor options (beyond the common ones of __init__).
    options: ClassVar[tuple[OptionSpec, ...]] = ()
    # Whether ``plan`` may give 0 rollouts to a prompt it was offered. One that cannot
    # spreads every step over all ``prompts_wanted`` prompts, each within the bounds.
    skips_prompts: ClassVar[bool] = False

    def __init__(
        self,
        *,
        n_samples_per_prompt: int,
        min_samples: int | None = None,
        max_samples: int | None = None,
        seed: int = 0,
        advantage_estimator: str = "group_norm",
        reward_threshold: float | None = None,
    ) -> None:
        n = int(n_samples_per_prompt)
        if n < 1:
            raise AllocatorError(f"--rollout.n_samples_per_prompt must be >= 1, got {n}")
        group = advantage_estimator in GROUP_ESTIMATORS
        lo = int(min_samples) if min_samples is not None else min(n, 2 if group else 1)
        hi = int(max_samples) if max_samples is not None else max(n, 4 * n)
        if group and lo < 2:
            raise AllocatorError(
                f"--allocator.min_samples={lo} is below 2, but --algo.advantage.estimator {advantage_estimator} "
                "needs at least 2 samples per group for its baseline; use --allocator.min_samples 2 or more"
            )
        if lo < 1:
            raise AllocatorError(f"--allocator.min_samples must be >= 1, got {lo}")
        if hi < lo:
            raise AllocatorError(f"--allocator.max_samples={hi} is below --allocator.min_samples={lo}")
        if not lo <= n <= hi:
            raise AllocatorError(
                f"--rollout.n_samples_per_prompt={n} lies outside [--allocator.min_samples, --allocator.max_samples]"
                f" = [{lo}, {hi}]"
            )
        if reward_threshold is not None and not math.isfinite(float(reward_threshold)):
            raise AllocatorError(
                f"--allocator.reward_threshold={reward_threshold} must be a finite number (a reward above it counts "
                "as a success)"
            )
        self.n_samples_per_prompt = n
        self.min_samples = lo
        self.max_samples = hi
        self.seed = int(seed)
        self.advantage_estimator = advantage_estimator
        self.reward_threshold = reward_threshold
        self.rng = np.random.default_rng(self.seed)
        self.steps = 0
        self.rollouts_drawn_total = 0
        self._pending = _StepFigures()
        self._drawn = np.zeros(0, dtype=np.int64)  # rollouts per prompt in the open plan/finish cycle

    # ── the contract ──

    def prompts_wanted(self, budget: int) -> int:
        """How many prompts to offer ``plan`` for ``budget`` rollouts (n each, by default)."""
        return math.ceil(int(budget) / self.n_samples_per_prompt)

    # ── steps of varying total (CERO's global budget mode); fixed totals by default ──

    @property
    def variable_step_total(self) -> bool:
        """True when the allocator sets each step's total itself, up to ``step_total_bound``:
        the step loop then runs one cycle and never refills it."""
        return False

    def fit_to_run(self, *, steps: int, step_budget: int, step_multiple: int = 1) -> None:
        """Told once by the trainer (or the simulator) before the first step: how many steps
        the run has, the per-step budget (``rollout.batch_size x n``) and the multiple every
        step total must be (``--train.batch_size``, so OpenRLHF's micro-batches and
        optimizer steps stay whole). Only allocators with a variable step total use it."""

    def step_total_bound(self, step_budget: int) -> int:
        """The most a step may spend when the per-step budget is ``step_budget``."""
        return int(step_budget)

    @property
    def run_rollout_budget(self) -> int | None:
        """Rollouts the whole run may spend when steps vary (its optimizer steps follow from
        it); None when every step spends its budget."""
        return None

    def plan(self, prompt_ids: Sequence[int] | np.ndarray, budget: int) -> np.ndarray:
        """Rollouts per prompt for the first round (0 skips the prompt)."""
        ids = as_prompt_ids(prompt_ids)
        budget = int(budget)
        if budget < 0:
            raise AllocatorError(f"budget must be >= 0, got {budget}")
        if not ids.size:  # zero prompts: a no-op for every allocator, whatever the budget
            self._drawn = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype=np.int64)
        counts = np.asarray(self._plan(ids, budget), dtype=np.int64)
        self._check_counts(ids, counts, "plan")
        self._drawn = counts.copy()
        return counts

    def extend(self, prompt_ids: Sequence[int] | np.ndarray, rewards: Sequence[Sequence[float]]) -> np.ndarray:
        """Further rollouts per prompt given every reward drawn so far this step; zeros end the step."""
        ids = as_prompt_ids(prompt_ids)
        scores = self._observed_scores(ids, rewards)
        if not ids.size:
            return np.zeros(0, dtype=np.int64)
        counts = np.asarray(self._extend(ids, scores), dtype=np.int64)
        self._check_counts(ids, counts, "extend")
        self._drawn = self._drawn + counts
        return counts

    def finish(
        self, prompt_ids: Sequence[int] | np.ndarray, rewards: Sequence[Sequence[float]] | None
    ) -> np.ndarray:
        """Close the step: update state from all rewards and say which groups train.

        ``rewards=None`` (outcomes not known at generation time, e.g. a reward model that
        scores later) is accepted only by allocators with ``needs_rewards = False``.
        """
        ids = as_prompt_ids(prompt_ids)
        if not ids.size:  # zero prompts: nothing to close, no step counted
            self._require_open_cycle(ids)
            if rewards is not None and len(rewards):
                raise AllocatorError(f"got rewards for {len(rewards)} prompts, expected 0")
            self._drawn = np.zeros(0, dtype=np.int64)
            return np.zeros(0, dtype=bool)
        if rewards is None:
            if self.needs_rewards:
                raise AllocatorError(
                    f"--rollout_allocator {self.name} needs rewards at generation time: pass --reward.remote_url "
                    "(a reward_func .py file or an HTTP reward server) or use --rollout_allocator uniform"
                )
            self._require_open_cycle(ids)
            scores = None
            keep = self._drawn > 0
        else:
            scores = self._observed_scores(ids, rewards)
            keep = np.asarray(self._finish(ids, scores), dtype=bool)
        if keep.shape != ids.shape:
            raise AllocatorError(f"{self.name}.finish returned {keep.shape} flags for {ids.size} prompts")
        sizes = self._drawn
        self._check_trained_sizes(ids[keep], sizes[keep], "kept prompt {id} with {size} samples")
        self.rollouts_drawn_total += int(sizes.sum())
        self._pending.add(scores, sizes, keep)
        self._drawn = np.zeros(0, dtype=np.int64)
        self.steps += 1
        return keep

    def fallback(
        self, prompt_ids: Sequence[int] | np.ndarray, rewards: Sequence[Sequence[float]], budget: int
    ) -> np.ndarray:
        """Size of the group to train per candidate (0 = not trained) when a step ends with
        ``budget`` rollouts left and no prompt qualified (see the module docstring).

        Candidates are groups drawn but not kept this step, each with every reward drawn
        for it (possibly none). A chosen group keeps its rollouts and is topped up to its
        size: at least what it has, within [min_samples, max_samples]; the sizes sum to at
        most ``budget``, and a prompt id is chosen at most once. Changes no state."""
        ids = as_prompt_ids(prompt_ids)
        budget = int(budget)
        if budget < 0:
            raise AllocatorError(f"budget must be >= 0, got {budget}")
        scores = self.to_scores(ids, rewards)
        drawn = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
        if not ids.size or budget == 0:
            return np.zeros(ids.size, dtype=np.int64)
        sizes = np.asarray(self._fallback(ids, scores, budget), dtype=np.int64)
        if sizes.shape != ids.shape:
            raise AllocatorError(f"{self.name}.fallback returned {sizes.shape} sizes for {ids.size} prompts")
        chosen = sizes > 0
        bad = chosen & ((sizes < drawn) | (sizes < self.min_samples) | (sizes > self.max_samples))
        if bad.any() or int(sizes.sum()) > budget or (sizes < 0).any():
            raise AllocatorError(
                f"{self.name}.fallback returned group sizes {sizes.tolist()} for {drawn.tolist()} rollouts drawn: "
                f"each must be 0, or at least the rollouts drawn and min_samples={self.min_samples} and at most "
                f"max_samples={self.max_samples}, and together at most the {budget} rollouts left"
            )
        if np.unique(ids[chosen]).size != int(chosen.sum()):
            raise AllocatorError(f"{self.name}.fallback chose a prompt twice")
        return sizes

    def finish_fallback(
        self, prompt_ids: Sequence[int] | np.ndarray, rewards: Sequence[Sequence[float]], added: Sequence[int]
    ) -> None:
        """The groups ``fallback`` chose train: ``rewards`` are all of each group's rewards,
        ``added`` the rollouts drawn for it in the fallback. Counts them in the metrics
        (``fallback_groups``, rollouts drawn and trained) and tells the allocator."""
        ids = as_prompt_ids(prompt_ids)
        scores = self.to_scores(ids, rewards)
        added = np.asarray(added, dtype=np.int64).reshape(-1)
        sizes = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
        if added.shape != ids.shape or (added < 0).any() or (added > sizes).any():
            raise AllocatorError(f"{self.name}.finish_fallback: added rollouts {added.tolist()} do not fit the groups")
        self._check_trained_sizes(ids, sizes, "fallback group of prompt {id} has {size} samples")
        if not ids.size:
            return
        self.rollouts_drawn_total += int(added.sum())
        self._pending.add_fallback(scores, sizes, added)
        self._finish_fallback(ids, scores, added)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable, versioned state; loading it into a fresh allocator resumes exactly."""
        return {
            "allocator": self.name,
            "version": STATE_VERSION,
            "settings": self._settings(),
            "rng": self.rng.bit_generator.state,
            "steps": self.steps,
            "rollouts_drawn_total": self.rollouts_drawn_total,
            "state": self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("allocator") != self.name:
            raise AllocatorError(
                f"checkpoint holds state of allocator {state.get('allocator')!r}, but --rollout_allocator is "
                f"{self.name!r}; resume with --rollout_allocator {state.get('allocator')} or start a new run"
            )
        if state.get("version") != STATE_VERSION:
            raise AllocatorError(
                f"allocator state version {state.get('version')} is not supported (expected {STATE_VERSION})"
            )
        before = self.state_dict()
        try:
            self._restore(state)
        except Exception as error:  # whatever a damaged state breaks in decoding it
            self._restore(before)  # all or nothing: the allocator stays as it was
            raise DamagedStateError(
                f"the saved state of allocator {self.name} is damaged ({type(error).__name__}: {error})"
            ) from error

    def _restore(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.steps = int(state["steps"])
        self.rollouts_drawn_total = int(state["rollouts_drawn_total"])
        self._pending = _StepFigures()
        self._drawn = np.zeros(0, dtype=np.int64)
        self._load_state(state["state"])

    def settings_changes(self, state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Settings that differ between a saved state and this allocator: name -> (saved, now).
        A resume may change them on purpose; the caller reports them."""
        saved, now = state.get("settings", {}), self._settings()
        return {key: (saved.get(key), now.get(key)) for key in sorted(saved.keys() | now.keys())
                if saved.get(key) != now.get(key)}

    def metrics(self) -> dict[str, float]:
        """Figures over every ``finish`` since the last call, then reset: one trainer step may
        close several plan/finish cycles (refills). Names carry no prefix; the trainer adds
        ``allocator/``."""
        figures = self._pending.summary(self.rollouts_drawn_total)
        figures.update(self._extra_metrics())
        self._pending = _StepFigures()
        return figures

    # ── for subclasses ──

    @abstractmethod
    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray: ...

    def _extend(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        return np.zeros(prompt_ids.size, dtype=np.int64)

    def _finish(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        return np.array([len(s) > 0 for s in scores], dtype=bool)

    def _fallback(self, prompt_ids: np.ndarray, scores: list[np.ndarray], budget: int) -> np.ndarray:
        """Default fallback: the candidates ``_fallback_order`` ranks, each grown to n
        (the last one may be smaller, not below min_samples)."""
        drawn = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
        return self.fallback_sizes(prompt_ids, drawn, self._fallback_order(prompt_ids, scores), budget)

    def _fallback_order(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        """Candidate positions, best first; those left out are never trained by the fallback.
        Default: prompts that already have rollouts, in the order offered (a prompt the
        allocator gave no rollout, as CERO's skips, is not worth one now either)."""
        return np.array([i for i, s in enumerate(scores) if len(s)], dtype=np.int64)

    def _finish_fallback(self, prompt_ids: np.ndarray, scores: list[np.ndarray], added: np.ndarray) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    def _extra_metrics(self) -> dict[str, float]:
        return {}

    def _settings(self) -> dict[str, Any]:
        return {
            "n_samples_per_prompt": self.n_samples_per_prompt,
            "min_samples": self.min_samples,
            "max_samples": self.max_samples,
            "seed": self.seed,
        }

    def uniform_counts(self, size: int, budget: int) -> np.ndarray:
        """``budget`` spread as evenly as the bounds allow (the fallback of every allocator)."""
        self.check_budget(size, budget)
        base, extra = divmod(budget, size) if size else (0, 0)
        counts = np.full(size, base, dtype=np.int64)
        counts[:extra] += 1
        return counts

    def fallback_sizes(
        self, prompt_ids: np.ndarray, drawn: np.ndarray, order: np.ndarray, budget: int, shrink: bool = True
    ) -> np.ndarray:
        """Greedy group sizes for a fallback: in ``order``, each prompt (once per id) is
        grown to max(n, drawn) (at most max_samples) while the budget lasts. With
        ``shrink``, a group that no longer fits whole takes what is left if that is at
        least max(drawn, min_samples); without, only whole groups are taken."""
        sizes = np.zeros(len(drawn), dtype=np.int64)
        left = int(budget)
        seen: set[int] = set()
        for i in np.asarray(order, dtype=np.int64).tolist():
            if left < self.min_samples:
                break
            pid = int(prompt_ids[i])
            if pid in seen:
                continue
            size = min(max(self.n_samples_per_prompt, int(drawn[i])), self.max_samples)
            if size > left:
                if not shrink:
                    continue
                size = left
            if size < max(int(drawn[i]), self.min_samples):
                continue
            seen.add(pid)
            sizes[i] = size
            left -= size
        return sizes

    def check_step(self, budget: int) -> None:
        """Refuse, before a run starts, a per-step budget the step loop could not serve: one
        that cannot be spread over the prompts this allocator asks for, when it cannot skip."""
        if not self.skips_prompts:
            self.check_budget(self.prompts_wanted(budget), budget)

    def check_budget(self, size: int, budget: int) -> None:
        """Refuse a budget that no allocation within [min_samples, max_samples] can spend exactly."""
        lo, hi = size * self.min_samples, size * self.max_samples
        if not lo <= budget <= hi:
            raise AllocatorError(
                f"a budget of {budget} rollouts cannot be spread over {size} prompts with "
                f"--allocator.min_samples={self.min_samples} and --allocator.max_samples={self.max_samples} "
                f"(possible: {lo}..{hi}); change --rollout.n_samples_per_prompt or the min/max bounds"
            )

    def to_scores(self, prompt_ids: np.ndarray, rewards: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """Rewards as success scores in [0, 1]: binary and fractional rewards as they are,
        others thresholded by ``reward_threshold``; NaN is an error naming the prompt.

        Checked on one flat array rather than prompt by prompt: a step has thousands of
        prompts and a Python loop of numpy calls over them costs milliseconds."""
        if len(rewards) != prompt_ids.size:
            raise AllocatorError(f"got rewards for {len(rewards)} prompts, expected {prompt_ids.size}")
        scores = [np.asarray(r, dtype=np.float64).reshape(-1) for r in rewards]
        if not scores:
            return scores
        flat = np.concatenate(scores)
        if not flat.size:
            return scores
        offsets = np.cumsum(np.fromiter(map(len, scores), dtype=np.int64, count=len(scores)))

        def owner(position: int) -> int:
            return int(np.searchsorted(offsets, position, side="right"))

        # The first faulty prompt is reported, NaN before range when both are in one prompt.
        nan = np.isnan(flat)
        if self.reward_threshold is None:
            out_of_range = (flat < 0.0) | (flat > 1.0)
        else:
            out_of_range = np.zeros(0, dtype=bool)
        nan_prompt = owner(int(nan.argmax())) if nan.any() else len(scores)
        range_prompt = owner(int(out_of_range.argmax())) if out_of_range.any() else len(scores)
        if nan_prompt < len(scores) and nan_prompt <= range_prompt:
            raise AllocatorError(f"reward is NaN for prompt {int(prompt_ids[nan_prompt])}; check the reward function")
        if range_prompt < len(scores):
            value = flat[int(out_of_range.argmax())]
            raise AllocatorError(
                f"reward {value:g} for prompt {int(prompt_ids[range_prompt])} lies outside [0, 1]; set "
                "--allocator.reward_threshold T to count rewards > T as successes"
            )
        if self.reward_threshold is not None:
            return np.split((flat > self.reward_threshold).astype(np.float64), offsets[:-1])
        return scores

    # ── internals ──

    def _require_open_cycle(self, ids: np.ndarray) -> None:
        if self._drawn.shape != ids.shape:
            raise AllocatorError(
                f"{self.name}: extend/finish got {ids.size} prompts but the open plan had {self._drawn.size}; "
                "call plan first, with the same prompts"
            )

    def _observed_scores(self, ids: np.ndarray, rewards: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """Scores of the open cycle, checked against what was planned: a prompt must have
        exactly as many rewards as rollouts were asked for it."""
        self._require_open_cycle(ids)
        scores = self.to_scores(ids, rewards)
        sizes = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
        wrong = np.flatnonzero(sizes != self._drawn)
        if wrong.size:
            i = int(wrong[0])
            raise AllocatorError(
                f"prompt {int(ids[i])} has {sizes[i]} rewards but {int(self._drawn[i])} rollouts were planned for it"
            )
        return scores

    def _check_trained_sizes(self, ids: np.ndarray, sizes: np.ndarray, what: str) -> None:
        """Every trained group within [min_samples, max_samples]; ``what`` names the first that is not."""
        bad = (sizes < self.min_samples) | (sizes > self.max_samples)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AllocatorError(
                f"{self.name} {what.format(id=int(ids[i]), size=int(sizes[i]))}, outside "
                f"[min_samples, max_samples] = [{self.min_samples}, {self.max_samples}]"
            )

    def _check_counts(self, ids: np.ndarray, counts: np.ndarray, where: str) -> None:
        if counts.shape != ids.shape:
            raise AllocatorError(f"{self.name}.{where} returned {counts.shape} counts for {ids.size} prompts")
        if (counts < 0).any():
            raise AllocatorError(f"{self.name}.{where} returned a negative count")


class _StepFigures:
    """What the finished cycles of one trainer step drew and kept, for ``metrics()``."""

    def __init__(self) -> None:
        self.kept_sizes: list[np.ndarray] = []
        self.kept_zero_variance: list[np.ndarray] = []
        self.drawn = 0
        self.offered = 0
        self.fallback_groups = 0

    def add(self, scores: list[np.ndarray] | None, sizes: np.ndarray, keep: np.ndarray) -> None:
        self.kept_sizes.append(sizes[keep])
        if scores is not None:
            self.kept_zero_variance.append(_zero_variance(scores)[keep])
        self.drawn += int(sizes.sum())
        self.offered += sizes.size

    def add_fallback(self, scores: list[np.ndarray], sizes: np.ndarray, added: np.ndarray) -> None:
        """Groups trained by the fallback: offered (and counted) in an earlier cycle of the
        step, so they now move from skipped to trained."""
        self.kept_sizes.append(sizes)
        self.kept_zero_variance.append(_zero_variance(scores))
        self.drawn += int(added.sum())
        self.fallback_groups += sizes.size

    def summary(self, drawn_total: int) -> dict[str, float]:
        sizes = np.concatenate(self.kept_sizes) if self.kept_sizes else np.zeros(0, dtype=np.int64)
        trained = sizes.size
        figures = {
            "samples_per_prompt_mean": float(sizes.mean()) if trained else 0.0,
            "samples_per_prompt_min": float(sizes.min()) if trained else 0.0,
            "samples_per_prompt_max": float(sizes.max()) if trained else 0.0,
            "rollouts_drawn": float(self.drawn),
            "rollouts_drawn_total": float(drawn_total),
            "rollouts_trained": float(sizes.sum()),
            "prompts_trained": float(trained),
            "prompts_skipped": float(max(self.offered - trained, 0)),
            "fallback_groups": float(self.fallback_groups),
        }
        if self.kept_zero_variance:  # unknown when rewards come only after generation
            zero_variance = np.concatenate(self.kept_zero_variance)
            figures["zero_variance_share"] = float(zero_variance.mean()) if zero_variance.size else 0.0
        return figures


def _zero_variance(scores: list[np.ndarray]) -> np.ndarray:
    """Per prompt: drawn at least once and every score equal (a group without gradient)."""
    sizes = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
    flagged = np.zeros(sizes.size, dtype=bool)
    drawn = np.flatnonzero(sizes > 0)
    if drawn.size:
        flat = np.concatenate(scores)
        starts = (np.cumsum(sizes) - sizes)[drawn]
        flagged[drawn] = np.minimum.reduceat(flat, starts) == np.maximum.reduceat(flat, starts)
    return flagged
