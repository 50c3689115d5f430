"""The real run and its calibrated twin, entry by entry.

Two figures are compared, both relative to uniform so that the real run's metric (greedy
accuracy) and the twin's (mean pass rate) need not share a unit:

- **gain at equal rollouts**: the entry's final train figure minus uniform's, same seed,
  divided by uniform's mean gain over the run, plus 1 (1.0 = as uniform, 1.2 = 20% more
  gain for the same rollouts);
- **speed-up to target**: uniform's rollouts to its start plus ``target_share`` of its gain,
  divided by the entry's, same seed.

The real run gives a mean and a 95% t-interval over its seeds; the twin gives a mean over
its own seeds. The twin agrees where its mean lies inside the real interval, and its
ranking (by gain at equal rollouts) is set beside the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from openrlhf_cero.sim.runner import RunRecord, run_allocator
from openrlhf_cero.sim.summary import first_reach, pass_rate_at, rollouts_to_target
from openrlhf_cero.sim.validation.real_results import RealRun
from openrlhf_cero.sim.validation.twin import Calibration

TARGET_SHARE = 0.75  # as docs/benchmarks-small-model.md: well above the evaluation noise


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    seeds: int  # finite values behind it

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        if self.seeds == 0:
            return "not reached"
        if self.seeds == 1 or not math.isfinite(self.low):
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided t-interval of the finite values (NaN: a seed that never reached the target)."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(finite.mean())
    if finite.size == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size))
    return Interval(mean, mean - half, mean + half, int(finite.size))


@dataclass(frozen=True)
class EntryFigures:
    """Per seed, relative to uniform (paired by seed)."""

    gain_ratio: list[float]
    speedup: list[float]
    final_train: list[float]


def _speedup(uniform_cost: float, cost: float) -> float:
    """Paired ratio; NaN where either run never reached the target or the target was met at the start."""
    return uniform_cost / cost if cost > 0 and math.isfinite(cost) else math.nan


def real_figures(real: RealRun, target_share: float = TARGET_SHARE) -> dict[str, EntryFigures]:
    """Every real run starts from one checkpoint, so each seed's start is the same; targets and
    gains are still taken per seed, as the twin (whose seeds draw different datasets) must."""
    at = real.equal_rollouts
    uniform = {c.seed: c for c in real.curves["uniform"]}
    gain = float(np.mean([c.at("train", at) - c.train[0] for c in uniform.values()]))
    cost_u = {s: first_reach(c.rollouts, c.train, c.train[0] + target_share * gain) for s, c in uniform.items()}
    out = {}
    for entry, runs in real.curves.items():
        paired = [c for c in runs if c.seed in uniform]
        out[entry] = EntryFigures(
            gain_ratio=[1.0 + (c.at("train", at) - uniform[c.seed].at("train", at)) / gain for c in paired],
            speedup=[
                _speedup(cost_u[c.seed], first_reach(c.rollouts, c.train, c.train[0] + target_share * gain))
                for c in paired
            ],
            final_train=[c.at("train", at) for c in paired],
        )
    return out


def run_twin(
    calibration: Calibration, entries: Sequence[str], seeds: Sequence[int], options: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, list[RunRecord]]:
    options = options or {}
    return {e: [run_allocator(calibration.scenario, e, s, options.get(e)) for s in seeds] for e in entries}


def twin_figures(records: Mapping[str, list[RunRecord]], target_share: float = TARGET_SHARE) -> dict[str, EntryFigures]:
    at = min(int(r.cum_rollouts[-1]) for runs in records.values() for r in runs)
    uniform = {r.seed: r for r in records["uniform"]}
    gain = float(np.mean([pass_rate_at(r, "train", at) - r.train_pass_rate[0] for r in uniform.values()]))

    def cost(r: RunRecord) -> float:
        return rollouts_to_target(r, "train", r.train_pass_rate[0] + target_share * gain)

    out = {}
    for entry, runs in records.items():
        out[entry] = EntryFigures(
            gain_ratio=[1.0 + (pass_rate_at(r, "train", at) - pass_rate_at(uniform[r.seed], "train", at)) / gain for r in runs],
            speedup=[_speedup(cost(uniform[r.seed]), cost(r)) for r in runs],
            final_train=[pass_rate_at(r, "train", at) for r in runs],
        )
    return out


def ranking(figures: Mapping[str, EntryFigures]) -> list[str]:
    """Entries by mean gain at equal rollouts, best first."""
    return sorted(figures, key=lambda e: -float(np.nanmean(figures[e].gain_ratio)))


@dataclass(frozen=True)
class Comparison:
    entries: list[str]
    real: dict[str, EntryFigures]
    twin: dict[str, EntryFigures]

    @property
    def real_ranking(self) -> list[str]:
        return ranking(self.real)

    @property
    def twin_ranking(self) -> list[str]:
        return ranking(self.twin)

    def gain_agrees(self, entry: str) -> bool:
        return t_interval(self.real[entry].gain_ratio).contains(float(np.nanmean(self.twin[entry].gain_ratio)))

    def speedup_agrees(self, entry: str) -> bool:
        twin = np.asarray(self.twin[entry].speedup, dtype=np.float64)
        return bool(np.isfinite(twin).any()) and t_interval(self.real[entry].speedup).contains(float(np.nanmean(twin)))

    def spearman(self) -> float:
        real_rank = [self.real_ranking.index(e) for e in self.entries]
        twin_rank = [self.twin_ranking.index(e) for e in self.entries]
        return float(stats.spearmanr(real_rank, twin_rank).statistic)

    def markdown(self) -> str:
        head = (
            "| entry | real gain at equal rollouts [95% CI] | twin | twin inside? | real speed-up to "
            f"{TARGET_SHARE:.0%} of uniform's gain [95% CI] | twin | twin inside? | real rank | twin rank |"
        )
        lines = [head, "|" + "---|" * 9]
        real_rank, twin_rank = self.real_ranking, self.twin_ranking
        for e in self.entries:
            twin_speed = np.asarray(self.twin[e].speedup, dtype=np.float64)
            lines.append(
                "| "
                + " | ".join(
                    [
                        e,
                        t_interval(self.real[e].gain_ratio).text(),
                        f"{np.nanmean(self.twin[e].gain_ratio):.2f}",
                        "yes" if self.gain_agrees(e) else "**no**",
                        t_interval(self.real[e].speedup).text(),
                        f"{np.nanmean(twin_speed):.2f}" if np.isfinite(twin_speed).any() else "not reached",
                        "yes" if self.speedup_agrees(e) else "**no**",
                        str(real_rank.index(e) + 1),
                        str(twin_rank.index(e) + 1),
                    ]
                )
                + " |"
            )
        return "\n".join(lines)


def compare(real: RealRun, records: Mapping[str, list[RunRecord]]) -> Comparison:
    entries = [e for e in real.entries if e in records]
    return Comparison(entries, real_figures(real), twin_figures(records))


__all__ = [
    "Comparison", "EntryFigures", "Interval", "compare", "ranking", "real_figures", "run_twin", "t_interval", "twin_figures",
]
