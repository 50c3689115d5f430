"""Benchmark figures from run records: per allocator, mean and spread over seeds.

Runs of different allocators with the same seed share the dataset and its shuffles,
so ratios to ``uniform`` and to the best baseline are taken per seed (paired) and then
averaged. The best baseline of a scenario is the one of ``BASELINE_NAMES`` (uniform,
dynamic_filtering, oversample_even, beta_greedy) with the fewest mean rollouts to target
among those that reached it on every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from openrlhf_cero.sim.baselines import BASELINE_NAMES
from openrlhf_cero.sim.runner import RunRecord
from openrlhf_cero.sim.scenario import Scenario

BASELINE = "uniform"


def first_reach(rollouts: np.ndarray, values: np.ndarray, target: float) -> float:
    """Rollouts at which ``values`` first reaches ``target`` (linear interpolation between
    points); NaN when it never does."""
    hit = np.flatnonzero(values >= target)
    if not hit.size:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return 0.0
    x0, x1 = rollouts[i - 1], rollouts[i]
    y0, y1 = values[i - 1], values[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)


def rollouts_to_target(record: RunRecord, metric: str, target: float) -> float:
    """Cumulative rollouts at which the mean pass rate first reaches ``target``; NaN when the
    run never reaches it."""
    return first_reach(record.cum_rollouts, record.metric(metric), target)


def pass_rate_at(record: RunRecord, metric: str, rollouts: float) -> float:
    return float(np.interp(rollouts, record.cum_rollouts, record.metric(metric)))


@dataclass
class Stat:
    mean: float
    sd: float
    reached: int  # seeds with a finite value
    seeds: int

    def text(self, fmt: str = "{:.3f}") -> str:
        if self.reached == 0:
            return "not reached"
        body = fmt.format(self.mean) + (f" ± {fmt.format(self.sd)}" if self.seeds > 1 else "")
        return body if self.reached == self.seeds else f"{body} ({self.reached}/{self.seeds} reached)"


def stat(values: list[float]) -> Stat:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if not finite.size:
        return Stat(math.nan, math.nan, 0, arr.size)
    sd = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return Stat(float(finite.mean()), sd, int(finite.size), int(arr.size))


@dataclass
class AllocatorSummary:
    allocator: str
    rollouts_to_target: Stat
    ratio_to_uniform: Stat | None  # uniform's rollouts-to-target / this one's (> 1: fewer rollouts)
    effective_rollout_ratio: Stat
    mixed_per_1000: Stat
    final_pass_rate: Stat  # headline metric at equal rollouts
    final_eval_pass_rate: Stat
    allocator_ms_per_step: Stat
    ratio_to_best_baseline: Stat | None = None  # as ratio_to_uniform, against the best baseline (best_baseline)


def _ratios(reference: dict[int, float], runs: list[RunRecord], to_target: list[float]) -> Stat:
    return stat([reference.get(r.seed, math.nan) / t if t > 0 else math.nan for r, t in zip(runs, to_target)])


def best_baseline(summaries: list[AllocatorSummary]) -> str | None:
    """The baseline (uniform included) with the fewest mean rollouts to target among those
    that reached it on every seed; None if none did."""
    best, fewest = None, math.inf
    for s in summaries:
        r = s.rollouts_to_target
        if s.allocator in BASELINE_NAMES and r.seeds and r.reached == r.seeds and r.mean < fewest:
            best, fewest = s.allocator, r.mean
    return best


def summarise(scenario: Scenario, records: dict[str, list[RunRecord]]) -> list[AllocatorSummary]:
    """One summary per allocator; ``records[name]`` holds one run per seed, seeds in the same order."""
    metric, target = scenario.metric, scenario.target
    equal = min(int(r.cum_rollouts[-1]) for runs in records.values() for r in runs)
    baseline = {r.seed: rollouts_to_target(r, metric, target) for r in records.get(BASELINE, [])}
    out = []
    for name, runs in records.items():
        to_target = [rollouts_to_target(r, metric, target) for r in runs]
        ratio = _ratios(baseline, runs, to_target) if baseline else None
        drawn = [float(r.cum_rollouts[-1]) for r in runs]
        out.append(
            AllocatorSummary(
                allocator=name,
                rollouts_to_target=stat(to_target),
                ratio_to_uniform=ratio,
                effective_rollout_ratio=stat([r.rollouts_mixed.sum() / d for r, d in zip(runs, drawn)]),
                mixed_per_1000=stat([1000.0 * r.mixed_groups.sum() / d for r, d in zip(runs, drawn)]),
                final_pass_rate=stat([pass_rate_at(r, metric, equal) for r in runs]),
                final_eval_pass_rate=stat(
                    [pass_rate_at(r, "eval", equal) if scenario.eval_size else math.nan for r in runs]
                ),
                allocator_ms_per_step=stat([1000.0 * r.allocator_seconds[1:].mean() for r in runs]),
            )
        )
    best = best_baseline(out)
    if best is not None:
        reference = {r.seed: rollouts_to_target(r, metric, target) for r in records[best]}
        for s, runs in zip(out, records.values()):
            s.ratio_to_best_baseline = _ratios(reference, runs, [rollouts_to_target(r, metric, target) for r in runs])
    return out


def kind(name: str) -> str:
    """How a table row is labelled: baseline, oracle or allocator."""
    return "baseline" if name in BASELINE_NAMES else "oracle" if name == "oracle" else "allocator"


def markdown_table(scenario: Scenario, summaries: list[AllocatorSummary], equal_rollouts: int) -> str:
    metric = "train" if scenario.metric == "train" else "held-out"
    best = best_baseline(summaries)
    head = (
        f"| allocator | rollouts to {metric} pass rate {scenario.target:g} | speed-up vs uniform (x) "
        f"| speed-up vs best baseline (x) | effective-rollout ratio | mixed groups / 1000 rollouts "
        f"| final {metric} pass rate | final held-out pass rate | allocator ms / step |"
    )
    lines = [head, "|" + "---|" * 9]
    for s in summaries:
        lines.append(
            "| "
            + " | ".join(
                [
                    s.allocator,
                    s.rollouts_to_target.text("{:,.0f}"),
                    s.ratio_to_uniform.text("{:.2f}") if s.ratio_to_uniform else "n/a",
                    s.ratio_to_best_baseline.text("{:.2f}") if s.ratio_to_best_baseline else "n/a",
                    s.effective_rollout_ratio.text(),
                    s.mixed_per_1000.text("{:.1f}"),
                    s.final_pass_rate.text(),
                    s.final_eval_pass_rate.text(),
                    s.allocator_ms_per_step.text("{:.2f}"),
                ]
            )
            + " |"
        )
    seeds = summaries[0].rollouts_to_target.seeds if summaries else 0
    lines.append("")
    lines.append(
        f"Mean ± sample SD over {seeds} seed(s). Final pass rates at equal rollouts "
        f"({equal_rollouts:,} per run). Speed-up: the reference's rollouts to target divided by the entry's, "
        f"per seed; the best baseline here is **{best or 'none (no baseline reached the target on every seed)'}** "
        "(of uniform, dynamic_filtering, oversample_even, beta_greedy: the fewest mean rollouts to target). "
        "Effective-rollout ratio: rollouts in trained groups with mixed rewards / rollouts drawn "
        "(skipped prompts' and filtered groups' rollouts included)."
    )
    return "\n".join(lines)


def equal_rollouts(records: dict[str, list[RunRecord]]) -> int:
    return min(int(r.cum_rollouts[-1]) for runs in records.values() for r in runs)
