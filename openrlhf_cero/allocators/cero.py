"""``cero``: Cross-Epoch adaptive Rollout Optimization (arXiv 2606.05606; derivation in docs/cero.md).

Each prompt carries a Beta posterior over its success probability and its cumulative
allocation X over all epochs. The utility of X is concave and saturating, scaled by the
posterior expected Bernoulli variance v, so rollouts go where outcomes are uncertain and
move away from prompts that already received many in earlier epochs.

Duals, all kept as logarithms:

* prompt dual ``log mu_i``: the Fenchel dual of U_i at X_i, i.e. the marginal utility
  U_i'(X_i); moved by a projected gradient step (size ``prompt_dual_step``; 1 = exact)
  after each visit;
* budget dual ``log lambda``: in ``step`` mode solved exactly per step so the step spends
  its budget; in ``global`` mode paced by projected online gradient descent so the run
  spends ``global_budget`` over ``global_steps`` steps.

A visit's allocation is the smoothed best response to (mu_i, lambda): the rollouts that
bring the prompt's marginal utility from mu_i down to lambda, clipped to
[min_samples, max_samples], then rounded to integers keeping the total exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from openrlhf_cero.allocators.base import AllocatorError, OptionSpec, RolloutAllocator
from openrlhf_cero.allocators.cero_utility import (
    UTILITY_FORMS,
    beta_value,
    log_entry_gain,
    log_marginal,
    log_ratio_for,
    rollouts_to_level,
)
from openrlhf_cero.allocators.prompt_table import PromptTable
from openrlhf_cero.allocators.registry import register_allocator
from openrlhf_cero.allocators.waterfill import round_to_total, solve_clipped_linear, solve_log_dual

BUDGET_MODES = ("step", "global")
# lambda never needs to exceed the largest possible marginal utility, v <= 1/4.
LOG_DUAL_MAX = math.log(0.25)
# Re-solves of lambda while dropping prompts not worth a group (each one brentq root).
_SKIP_PASSES = 4


@register_allocator
class CeroAllocator(RolloutAllocator):
    name = "cero"
    options = (
        OptionSpec("prior_alpha", float, 1.0, "Beta prior alpha of every prompt's success probability (> 0)"),
        OptionSpec("prior_beta", float, 1.0, "Beta prior beta of every prompt's success probability (> 0)"),
        OptionSpec(
            "saturation_scale",
            float,
            1024.0,
            "saturation scale k of the cumulative-allocation utility, in rollouts: after X rollouts in earlier "
            "epochs a prompt's marginal value is divided by (1 + X/k)^2 (hyperbolic) or exp(X/k) (exp)",
        ),
        OptionSpec(
            "utility", str, "hyperbolic", "saturating utility form of the cumulative allocation", UTILITY_FORMS
        ),
        OptionSpec(
            "prompt_dual_step",
            float,
            1.0,
            "projected gradient step on each prompt's log dual after a visit, in (0, 1]; 1 jumps to the exact "
            "Fenchel minimiser, smaller values average the value estimate over visits",
        ),
        OptionSpec(
            "budget_dual_step",
            float,
            2.0,
            "global mode: step size of the budget dual's online gradient descent (divided by sqrt(global_steps))",
        ),
        OptionSpec(
            "budget_mode",
            str,
            "step",
            "step: every step spends exactly rollout.batch_size * n_samples_per_prompt; global: pace "
            "global_budget over global_steps, each step between step_floor and step_ceiling",
            BUDGET_MODES,
        ),
        OptionSpec(
            "skip",
            bool,
            True,
            "step mode: give 0 rollouts (skip this visit) to prompts whose first min_samples rollouts are worth "
            "less than the budget dual; their share goes to the other prompts",
        ),
        OptionSpec(
            "prompt_oversample",
            float,
            1.0,
            "step mode: offer this many times budget / n_samples_per_prompt prompts per step (>= 1), so that "
            "skipped prompts are replaced by others within the same step",
        ),
        OptionSpec(
            "global_budget",
            int,
            0,
            "global mode: total rollouts of the run; 0 = what uniform spends over the run (set by the trainer)",
        ),
        OptionSpec(
            "global_steps",
            int,
            0,
            "global mode: steps the global budget is paced over; 0 = the run's steps (set by the trainer)",
        ),
        OptionSpec(
            "step_floor",
            float,
            0.5,
            "global mode: least a step spends, as a share of its prompts x n_samples_per_prompt, in [0, 1]",
        ),
        OptionSpec(
            "step_ceiling",
            float,
            2.0,
            "global mode: most a step spends, as a multiple of rollout.batch_size x n_samples_per_prompt (>= 1)",
        ),
    )

    def __init__(
        self,
        *,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        saturation_scale: float = 1024.0,
        utility: str = "hyperbolic",
        prompt_dual_step: float = 1.0,
        budget_dual_step: float = 2.0,
        budget_mode: str = "step",
        global_budget: int = 0,
        global_steps: int = 0,
        step_floor: float = 0.5,
        step_ceiling: float = 2.0,
        skip: bool = True,
        prompt_oversample: float = 1.0,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.prior_alpha = _positive("prior_alpha", prior_alpha)
        self.prior_beta = _positive("prior_beta", prior_beta)
        self.saturation_scale = _positive("saturation_scale", saturation_scale)
        self.utility = _choice("utility", utility, UTILITY_FORMS)
        self.prompt_dual_step = float(prompt_dual_step)
        if not 0.0 < self.prompt_dual_step <= 1.0:
            raise AllocatorError(f"--allocator.cero.prompt_dual_step={prompt_dual_step} must lie in (0, 1]")
        self.budget_dual_step = _positive("budget_dual_step", budget_dual_step)
        self.budget_mode = _choice("budget_mode", budget_mode, BUDGET_MODES)
        self.global_budget = int(global_budget)
        self.global_steps = int(global_steps)
        self.step_floor = float(step_floor)
        if not 0.0 <= self.step_floor <= 1.0:
            raise AllocatorError(f"--allocator.cero.step_floor={step_floor} must lie in [0, 1]")
        self.step_ceiling = float(step_ceiling)
        if not 1.0 <= self.step_ceiling <= 16.0:
            raise AllocatorError(f"--allocator.cero.step_ceiling={step_ceiling} must lie in [1, 16]")
        if self.global_budget < 0 or self.global_steps < 0:
            raise AllocatorError(
                f"--allocator.cero.global_budget={global_budget} and --allocator.cero.global_steps={global_steps} "
                "must be >= 0 (0: set by the trainer from the run)"
            )
        self.skip = bool(skip)
        self.prompt_oversample = float(prompt_oversample)
        if not 1.0 <= self.prompt_oversample <= 16.0:
            raise AllocatorError(f"--allocator.cero.prompt_oversample={prompt_oversample} must lie in [1, 16]")
        self.log_prior_value = float(np.log(beta_value(self.prior_alpha, self.prior_beta)))
        self.table = PromptTable(
            {
                "alpha": (np.float32, self.prior_alpha),
                "beta": (np.float32, self.prior_beta),
                "cumulative": (np.float32, 0.0),
                "visits": (np.uint32, 0),
                "log_dual": (np.float32, self.log_prior_value),
            }
        )
        self.log_budget_dual: float | None = None  # global mode's OGD iterate
        self.global_spent = 0
        self.global_plans = 0
        # Told by fit_to_run (trainer or simulator); without it, plan's budget is the ceiling
        # and step_floor its share (direct use of the contract, e.g. the regret benchmark).
        self._step_budget: int | None = None
        self._step_multiple = 1
        self._planned_ids = np.zeros(0, dtype=np.uint64)
        self._planned_rows = np.zeros(0, dtype=np.int64)
        self._figures = _CeroFigures()

    # ── plan ──

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        rows = self.table.lookup_or_insert(prompt_ids)
        self._planned_ids, self._planned_rows = prompt_ids.copy(), rows
        log_mu = self.table.columns["log_dual"][rows].astype(np.float64)
        cumulative = self.table.columns["cumulative"][rows].astype(np.float64)
        if self.budget_mode == "step" and self.skip:
            counts, log_dual = self._plan_with_skips(log_mu, cumulative, budget)
        else:
            batch = _Batch(self, log_mu, cumulative)
            if self.budget_mode == "step":
                self.check_budget(prompt_ids.size, budget)
                log_dual, total = batch.solve(budget), budget
            else:
                log_dual, total = self._pace(batch, prompt_ids.size, budget)
            counts = round_to_total(batch.clipped(log_dual), total, self.min_samples, self.max_samples)
        cols = self.table.columns
        values = beta_value(cols["alpha"][rows], cols["beta"][rows])
        self._figures.add_plan(log_dual, values, counts, self.min_samples, self.max_samples)
        return counts

    @property
    def variable_step_total(self) -> bool:
        """Global mode paces each step's total itself: the shared step loop must not refill it."""
        return self.budget_mode == "global"

    def fit_to_run(self, *, steps: int, step_budget: int, step_multiple: int = 1) -> None:
        """Global mode: unset run settings take the run's shape (global_steps = its steps,
        global_budget = what uniform spends over them), and every step total becomes a
        whole multiple of ``step_multiple`` (the run budget is rounded down to one)."""
        if self.budget_mode != "global":
            return
        if steps < 1 or step_budget < 1 or step_multiple < 1:
            raise AllocatorError(
                f"fit_to_run needs positive steps, budget and multiple; got {steps}, {step_budget}, {step_multiple}"
            )
        self._step_budget, self._step_multiple = int(step_budget), int(step_multiple)
        self.global_steps = self.global_steps or int(steps)
        budget = self.global_budget or int(steps) * int(step_budget)
        self.global_budget = budget // self._step_multiple * self._step_multiple

    def step_total_bound(self, step_budget: int) -> int:
        if self.budget_mode != "global" or not self._step_budget:  # unshaped: the budget is the ceiling
            return int(step_budget)
        return int(self.step_ceiling * step_budget)

    @property
    def run_rollout_budget(self) -> int | None:
        return self.global_budget if self.budget_mode == "global" and self.global_budget > 0 else None

    @property
    def skips_prompts(self) -> bool:
        return self.budget_mode == "step" and self.skip

    def check_step(self, budget: int) -> None:
        try:
            super().check_step(budget)
        except AllocatorError as error:
            most = self.n_samples_per_prompt / self.min_samples
            raise AllocatorError(
                f"{error}. With --allocator.cero.skip false every one of the {self.prompts_wanted(budget)} prompts a "
                f"step takes (--allocator.cero.prompt_oversample={self.prompt_oversample:g} x the rollout batch) gets "
                f"at least {self.min_samples} rollouts: set --allocator.cero.prompt_oversample to at most {most:g}, "
                "or keep --allocator.cero.skip true"
            ) from None

    def prompts_wanted(self, budget: int) -> int:
        if self.budget_mode == "step":
            return math.ceil(int(budget) * self.prompt_oversample / self.n_samples_per_prompt)
        if self._step_budget:  # the trainer passes step_total_bound(step budget): one batch of prompts
            return math.ceil(round(int(budget) / self.step_ceiling, 6) / self.n_samples_per_prompt)
        return super().prompts_wanted(budget)

    def _plan_with_skips(self, log_mu: np.ndarray, cumulative: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
        """Step mode with skips: a prompt takes part only if its first min_samples rollouts
        are worth their price, mu_i * entry_i >= lambda. Prompts are admitted best first;
        lambda is re-solved after dropping the unworthy, a few passes toward the fixed
        point where every admitted prompt is worth its group. When the worthy prompts
        cannot absorb the budget within max_samples, the best unworthy prompts fill in,
        each held to n_samples_per_prompt."""
        size, low, high = log_mu.size, self.min_samples, self.max_samples
        if budget > size * high or 0 < budget < low:
            self.check_budget(size, budget)  # raises with the flags to change
        counts = np.zeros(size, dtype=np.int64)
        if budget == 0:
            return counts, LOG_DUAL_MAX
        entry = log_mu + log_entry_gain(self.utility, low, cumulative, self.saturation_scale)
        order = np.argsort(-entry, kind="stable")
        most = min(size, budget // low)  # more admitted prompts could not all get min_samples
        admitted, caps = order[:most], np.full(most, high)
        for _ in range(_SKIP_PASSES):
            batch = _Batch(self, log_mu[admitted], cumulative[admitted], caps)
            log_dual = batch.solve(budget)
            worthy = int((entry[admitted] >= log_dual).sum())  # a prefix: admitted is sorted
            if worthy == admitted.size:
                break
            # Fill up to the budget with the best unworthy prompts, held to n_samples_per_prompt
            # so that skipping never piles rollouts onto prompts not worth a group.
            fillers = max(0, -(-(budget - worthy * high) // self.n_samples_per_prompt))
            if worthy + fillers > most:
                break
            admitted = order[: worthy + fillers]
            caps = np.concatenate([np.full(worthy, high), np.full(fillers, min(high, self.n_samples_per_prompt))])
        batch = _Batch(self, log_mu[admitted], cumulative[admitted], caps)
        log_dual = batch.solve(budget)
        counts[admitted] = round_to_total(batch.clipped(log_dual), budget, low, caps)
        return counts, log_dual

    def _pace(self, batch: "_Batch", size: int, budget: int) -> tuple[float, int]:
        """Global mode: this step's log dual and total. The OGD iterate sets the spend; a
        spend outside [floor, ceiling], or one that would leave the rest of the run unable
        to meet the budget, is clamped for this step only. Totals are whole multiples of the
        trainer's step multiple wherever one fits between the bounds."""
        if self.global_budget <= 0 or self.global_steps <= 0:
            raise AllocatorError(
                "--allocator.cero.budget_mode global needs --allocator.cero.global_budget (total rollouts) and "
                "--allocator.cero.global_steps, or a trainer that sets them from the run (fit_to_run); got "
                f"{self.global_budget} and {self.global_steps}"
            )
        nominal = size * self.n_samples_per_prompt if self._step_budget else int(budget)
        ceiling = min(int(budget), size * self.max_samples)
        floor = max(math.ceil(self.step_floor * nominal), size * self.min_samples)
        floor, ceiling = _whole_multiples(floor, ceiling, self._step_multiple)
        if floor > ceiling:
            raise AllocatorError(
                f"global budget mode: the step floor {floor} (--allocator.cero.step_floor={self.step_floor} of "
                f"{nominal} rollouts, at least {size} prompts x --allocator.min_samples={self.min_samples}) "
                f"exceeds the ceiling {ceiling} (the step's bound {budget}, at most {size} x --allocator.max_samples="
                f"{self.max_samples}); offer more prompts or lower the floor"
            )
        steps_left = self.global_steps - self.global_plans
        budget_left = self.global_budget - self.global_spent
        self.global_plans += 1
        if steps_left <= 0:  # the paced horizon is over: spend the floor
            log_dual = batch.solve(floor)
            self.global_spent += floor
            return log_dual, floor
        # Keep the rest of the run able to meet the budget (later steps assumed alike);
        # on the last paced step this leaves exactly what is left.
        low = min(max(floor, budget_left - (steps_left - 1) * ceiling), ceiling)
        high = max(min(ceiling, budget_left - (steps_left - 1) * floor), floor)
        low, high = _whole_multiples(low, high, self._step_multiple)
        target = min(max(budget_left / steps_left, low), high)
        if self.log_budget_dual is None:  # first step: start at the dual that meets the pace
            self.log_budget_dual = batch.solve(target)
        log_dual = self.log_budget_dual
        spend = batch.total(log_dual)
        total = _nearest_multiple(spend, low, high, self._step_multiple)
        if abs(batch.total(log_dual) - total) > 0.5:
            log_dual = batch.solve(total)
        # Projected OGD on log lambda: the dual function's gradient is (target - spend).
        eta = self.budget_dual_step / math.sqrt(self.global_steps)
        self.log_budget_dual = min(self.log_budget_dual + eta * (spend - target) / target, LOG_DUAL_MAX)
        self.global_spent += total
        return log_dual, total

    # ── finish ──

    def _finish(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        if np.array_equal(prompt_ids, self._planned_ids):
            rows = self._planned_rows
        else:
            rows = self.table.lookup_or_insert(prompt_ids)
        sizes = self._drawn
        observed = sizes > 0
        successes = _group_sums(scores, sizes)
        cols = self.table.columns
        old_marginal_shift = log_marginal(self.utility, 0.0, cols["cumulative"][rows], self.saturation_scale)
        np.add.at(cols["alpha"], rows, successes.astype(np.float32))
        np.add.at(cols["beta"], rows, (sizes - successes).astype(np.float32))
        np.add.at(cols["cumulative"], rows, sizes.astype(np.float32))
        np.add.at(cols["visits"], rows[observed], np.uint32(1))
        self._update_prompt_duals(rows, old_marginal_shift)
        self._figures.add_finish(cols["cumulative"][rows])
        self._planned_ids = np.zeros(0, dtype=np.uint64)
        self._planned_rows = np.zeros(0, dtype=np.int64)
        return observed

    def _update_prompt_duals(self, rows: np.ndarray, old_shift: np.ndarray) -> None:
        """log mu <- min(log v, log mu + shift(X) + eta (log mu* - log mu - shift(X))):
        the known change of X moves the dual exactly; the new posterior value by one
        projected gradient step toward the Fenchel minimiser log mu* = log v + log u'(X/k)."""
        cols = self.table.columns
        rows, first = np.unique(rows, return_index=True)
        old_shift = old_shift[first]
        log_value = np.log(beta_value(cols["alpha"][rows], cols["beta"][rows]))
        new_shift = log_marginal(self.utility, 0.0, cols["cumulative"][rows], self.saturation_scale)
        moved = cols["log_dual"][rows].astype(np.float64) + (new_shift - old_shift)
        target = log_value + new_shift
        updated = moved + self.prompt_dual_step * (target - moved)
        cols["log_dual"][rows] = np.minimum(updated, log_value)

    # ── state and metrics ──

    def posterior(self, prompt_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Tracked state of some prompts (priors for untracked ones), for tests and analysis."""
        rows = self.table.lookup(np.asarray(prompt_ids, dtype=np.uint64))
        known = rows >= 0
        out: dict[str, np.ndarray] = {}
        for name, (dtype, default) in self.table.spec.items():
            values = np.full(rows.size, default, dtype=np.float64)
            values[known] = self.table.columns[name][rows[known]]
            out[name] = values
        out["value"] = beta_value(out["alpha"], out["beta"])
        return out

    def _state(self) -> dict[str, Any]:
        return {
            "table": self.table.state(),
            "log_budget_dual": self.log_budget_dual,
            "global_spent": self.global_spent,
            "global_plans": self.global_plans,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.table.load_state(state["table"])
        self.log_budget_dual = state["log_budget_dual"]
        self.global_spent = int(state["global_spent"])
        self.global_plans = int(state["global_plans"])
        self._planned_ids = np.zeros(0, dtype=np.uint64)
        self._planned_rows = np.zeros(0, dtype=np.int64)
        self._figures = _CeroFigures()

    def _settings(self) -> dict[str, Any]:
        settings = super()._settings()
        settings.update({spec.name: getattr(self, spec.name) for spec in self.options})
        return settings

    def _extra_metrics(self) -> dict[str, float]:
        figures = self._figures.summary()
        figures["tracked_prompts"] = float(len(self.table))
        if self.budget_mode == "global":
            figures["global_budget_left"] = float(self.global_budget - self.global_spent)
        self._figures = _CeroFigures()
        return figures


class _Batch:
    """One batch's continuous allocation as a function of the log budget dual."""

    def __init__(
        self, alloc: CeroAllocator, log_mu: np.ndarray, cumulative: np.ndarray, high: np.ndarray | None = None
    ) -> None:
        self.form, self.scale = alloc.utility, alloc.saturation_scale
        self.low = alloc.min_samples
        self.high = alloc.max_samples if high is None else high
        self.log_mu, self.cumulative = log_mu, cumulative
        # Below the first every prompt is at its upper bound; above the second at min_samples.
        self.bracket = (
            float((log_mu - log_ratio_for(self.form, self.high, cumulative, self.scale)).min()),
            float((log_mu - log_ratio_for(self.form, self.low, cumulative, self.scale)).max()),
        )

    def raw(self, log_dual: float) -> np.ndarray:
        return rollouts_to_level(self.form, self.log_mu - log_dual, self.cumulative, self.scale)

    def clipped(self, log_dual: float) -> np.ndarray:
        return np.clip(self.raw(log_dual), self.low, self.high)

    def total(self, log_dual: float) -> float:
        return float(self.clipped(log_dual).sum())

    def solve(self, total: float) -> float:
        """log lambda spending ``total``, exactly: each form is linear in one variable."""
        if self.form == "exp":  # n = k (log mu - t): linear in s = -t
            slope = np.full(self.log_mu.size, self.scale)
            return -solve_clipped_linear(slope, -self.scale * self.log_mu, self.low, self.high, total)
        if self.form == "hyperbolic":  # n = (k + X)(exp((log mu - t) / 2) - 1): linear in s = exp(-t / 2)
            base = self.scale + self.cumulative
            s = solve_clipped_linear(base * np.exp(0.5 * self.log_mu), base, self.low, self.high, total)
            return -2.0 * math.log(s)
        return solve_log_dual(self.raw, self.low, self.high, total, self.bracket)


class _CeroFigures:
    """CERO's own figures over the cycles since the last ``metrics()``."""

    def __init__(self) -> None:
        self.log_duals: list[float] = []
        self.value_sum = 0.0
        self.planned = 0
        self.at_min = 0
        self.at_max = 0
        self.skipped = 0
        self.cumulative_sum = 0.0
        self.finished = 0

    def add_plan(self, log_dual: float, values: np.ndarray, counts: np.ndarray, low: int, high: int) -> None:
        self.log_duals.append(float(log_dual))
        self.value_sum += float(values.sum())
        self.planned += counts.size
        self.at_min += int((counts == low).sum())
        self.at_max += int((counts == high).sum())
        self.skipped += int((counts == 0).sum())

    def add_finish(self, cumulative: np.ndarray) -> None:
        self.cumulative_sum += float(cumulative.sum())
        self.finished += cumulative.size

    def summary(self) -> dict[str, float]:
        if not self.planned:
            return {}
        figures = {
            "budget_dual_log": float(np.mean(self.log_duals)),
            "value_mean": self.value_sum / self.planned,
            "share_at_min": self.at_min / self.planned,
            "share_at_max": self.at_max / self.planned,
            "share_skipped": self.skipped / self.planned,
        }
        if self.finished:
            figures["cumulative_allocation_mean"] = self.cumulative_sum / self.finished
        return figures


def _group_sums(scores: list[np.ndarray], sizes: np.ndarray) -> np.ndarray:
    if not sizes.sum():
        return np.zeros(sizes.size)
    flat = np.concatenate(scores)
    return np.bincount(np.repeat(np.arange(sizes.size), sizes), weights=flat, minlength=sizes.size)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0.0 or not math.isfinite(value):
        raise AllocatorError(f"--allocator.cero.{name}={value} must be a positive number")
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise AllocatorError(f"--allocator.cero.{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _whole_multiples(low: int, high: int, multiple: int) -> tuple[int, int]:
    """[low, high] shrunk to its whole multiples of ``multiple``; unchanged when none lies
    inside (a short last batch may have room for none: it then trains what it has, as
    OpenRLHF trains a short last batch)."""
    if multiple <= 1:
        return int(low), int(high)
    up, down = -(-int(low) // multiple) * multiple, int(high) // multiple * multiple
    return (up, down) if up <= down else (int(low), int(high))


def _nearest_multiple(value: float, low: int, high: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest ``value`` within [low, high] (the integer nearest
    when none lies inside)."""
    if multiple > 1 and low % multiple == 0 and high % multiple == 0:
        return int(min(max(round(value / multiple) * multiple, low), high))
    return int(min(max(round(value), low), high))
