"""The real small-model run's results file, as the validation needs it.

Only the JSON is read (the benchmark is never imported: data flows from the real run
to the simulator, not back). A file that lacks what the twin needs fails with the key
that is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class RealResultsError(ValueError):
    """The results file cannot be used to validate the simulator."""


@dataclass(frozen=True)
class RealCurve:
    """One real run: greedy accuracy against cumulative rollouts drawn."""

    entry: str
    seed: int
    rollouts: np.ndarray
    train: np.ndarray
    held_out: np.ndarray

    def at(self, which: str, rollouts: float) -> float:
        values = self.train if which == "train" else self.held_out
        return float(np.interp(rollouts, self.rollouts, values))


@dataclass(frozen=True)
class RealRun:
    """What the simulated twin copies (setting, starting pass counts) and what it must predict (curves)."""

    train_size: int
    eval_size: int
    batch_prompts: int
    n: int
    min_samples: int
    max_samples: int
    total_rollouts: int
    buckets: int
    start_successes: np.ndarray  # per training prompt, from the warm-up's sampled pass rates
    start_trials: np.ndarray
    curves: dict[str, list[RealCurve]]  # entry -> runs, seed order

    @property
    def entries(self) -> list[str]:
        return list(self.curves)

    @property
    def seeds(self) -> list[int]:
        return sorted({c.seed for runs in self.curves.values() for c in runs})

    @property
    def equal_rollouts(self) -> float:
        """The rollouts every run reached: figures at equal rollouts are taken there."""
        return float(min(c.rollouts[-1] for runs in self.curves.values() for c in runs))


def _need(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise RealResultsError(f"{where} has no {key!r}; it is needed to build the simulated twin")
    return mapping[key]


def parse_real_results(results: Mapping[str, Any], source: str = "results") -> RealRun:
    """The real run's results as the benchmark writes them: ``config``, ``runs`` (each with
    ``evals`` of rollouts / train / held_out) and ``warmup.train_prompts`` (each training
    prompt's sampled starting pass rate over ``samples`` draws, and its bucket)."""
    config = _need(results, "config", source)
    table = _need(_need(results, "warmup", source), "train_prompts", f"{source}['warmup']")
    where = f"{source}['warmup']['train_prompts']"
    trials = int(_need(table, "samples", where))
    rates = np.asarray(_need(table, "pass_rate", where), dtype=np.float64)
    successes = np.rint(rates * trials).astype(np.int64)  # rates were written as counts / samples
    buckets = len(set(_need(table, "bucket", where)))
    curves: dict[str, list[RealCurve]] = {}
    for key, run in _need(results, "runs", source).items():
        evals = run.get("evals") or []
        if not evals:
            continue
        curves.setdefault(run["allocator"], []).append(
            RealCurve(
                entry=run["allocator"],
                seed=int(run["seed"]),
                rollouts=np.array([e["rollouts"] for e in evals], dtype=np.float64),
                train=np.array([e["train"] for e in evals], dtype=np.float64),
                held_out=np.array([e["held_out"] for e in evals], dtype=np.float64),
            )
        )
    if "uniform" not in curves:
        raise RealResultsError(f"{source} has no uniform run; the twin is calibrated on uniform")
    for runs in curves.values():
        runs.sort(key=lambda c: c.seed)
    # GRPO may train on a subset of the warm-up's data (the benchmark's RL prompts).
    sizes = results.get("rl_prompts") or {
        "train": _need(config, "train_size", "config"),
        "held_out": _need(config, "eval_size", "config"),
    }
    if int(sizes["train"]) != successes.size:
        raise RealResultsError(
            f"{source}: {successes.size} starting pass rates for {sizes['train']} training prompts; they must match"
        )
    return RealRun(
        train_size=int(sizes["train"]),
        eval_size=int(sizes["held_out"]),
        batch_prompts=int(_need(config, "batch_prompts", "config")),
        n=int(_need(config, "n", "config")),
        min_samples=int(_need(config, "min_samples", "config")),
        max_samples=int(_need(config, "max_samples", "config")),
        total_rollouts=int(_need(config, "total_rollouts", "config")),
        buckets=buckets,
        start_successes=successes,
        start_trials=np.full(successes.size, trials, dtype=np.int64),
        curves=curves,
    )


def read_real_results(path: Path) -> RealRun:
    try:
        results = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RealResultsError(f"--real {path}: no such file (the real run writes it: docs/benchmarks-small-model.md)") from None
    return parse_real_results(results, str(path))


__all__ = ["RealCurve", "RealResultsError", "RealRun", "parse_real_results", "read_real_results"]
