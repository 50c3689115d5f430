"""Sweep the simulator-chosen options of CERO, VIP and Pilot-Commit on the corrected simulator.

Why: the defaults of these allocators were first chosen on a simulator whose learning rule
was not OpenRLHF's loss gradient (issue 12). This script re-measures a small grid per
allocator on the scenarios ``deepscaler``, ``hard`` and ``easy`` and prints, per setting,
the speed-up to the scenario's target against ``uniform`` (per-seed ratio, mean ± SD over
seeds, the same statistic as docs/benchmarks.md). The tuning tables of docs/cero.md,
docs/vip.md and docs/pilot_commit.md are this script's output.

Criterion (printed as ``rank score``): the mean of the deepscaler and hard speed-ups, among
the settings whose mean speed-up on easy is at least 1 (never slower than uniform there).

Examples::

    python benchmarks/tune_defaults.py --allocator cero --seeds 3
    python benchmarks/tune_defaults.py --allocator cero --seeds 5 --settings 'default;oversample 1, k 64'

Runs are sequential (one process); every run is deterministic for its seed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from openrlhf_cero.cli.bench import quiet_step_loop
from openrlhf_cero.sim.runner import run_allocator
from openrlhf_cero.sim.scenario import make_scenario
from openrlhf_cero.sim.summary import Stat, rollouts_to_target, stat

SCENARIOS = ("deepscaler", "hard", "easy")

# Per allocator: label -> options given on top of its defaults. "default" is the code's defaults.
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "cero": {
        "default": {},
        **{
            f"oversample {po:g}, k {k:g}": {"prompt_oversample": po, "saturation_scale": k}
            for po in (1.0, 2.0, 3.0, 4.0)
            for k in (2.0, 16.0, 64.0, 256.0)
        },
        **{
            f"oversample {po:g}, k {k:g}": {"prompt_oversample": po, "saturation_scale": k}
            for po in (1.0, 2.0)
            for k in (512.0, 1024.0, 4096.0, 1e6)
        },
        **{
            f"oversample 1, k {k:g}, {variant}": {"prompt_oversample": 1.0, "saturation_scale": k, **extra}
            for k in (64.0, 1024.0)
            for variant, extra in (
                ("exp", {"utility": "exp"}),
                ("Jeffreys prior", {"prior_alpha": 0.5, "prior_beta": 0.5}),
                ("no skip", {"skip": False}),
            )
        },
    },
    "vip": {
        "default": {},
        **{
            f"prior_logit {mu:g}, noise {s:g}": {"prior_logit": mu, "noise_scale": s}
            for mu in (-2.0, -1.0, 0.0)
            for s in (0.5, 1.0, 2.0)
        },
        "length_scale 0.2": {"length_scale": 0.2},
        "length_scale 0.8": {"length_scale": 0.8},
    },
    "pilot_commit": {
        "default": {},
        **{f"eviction {e}": {"eviction_threshold": e} for e in (0, 8, 32)},
        "band_high 0.5": {"band_high": 0.5},
        "band_low 0 (commit all-wrong pilots)": {"band_low": 0.0},
        "pool_factor 4": {"pool_factor": 4.0},
        "adaptive_pool false, max_rounds 64": {"adaptive_pool": False, "max_rounds": 64},
        "adaptive_pool false": {"adaptive_pool": False},
        "pool_factor 1.5": {"pool_factor": 1.5},
        "defer_delay 1": {"defer_delay": 1},
        "max_defers 0": {"max_defers": 0},
        "n_pilot 2": {"n_pilot": 2},
    },
}


def speed_ups(
    allocator: str, options: Mapping[str, Any], scenario_name: str, seeds: Sequence[int], uniform: dict[tuple[str, int], float]
) -> Stat:
    """Per-seed uniform-rollouts / allocator-rollouts to the scenario's target; NaN where the
    allocator never reached it (reported as fewer seeds reached)."""
    scenario = make_scenario(scenario_name)
    ratios = []
    for seed in seeds:
        key = (scenario_name, seed)
        if key not in uniform:
            uniform[key] = rollouts_to_target(run_allocator(scenario, "uniform", seed), scenario.metric, scenario.target)
        rollouts = rollouts_to_target(run_allocator(scenario, allocator, seed, options), scenario.metric, scenario.target)
        ratios.append(uniform[key] / rollouts if rollouts > 0 else math.nan)
    return stat(ratios)


def rank_score(by_scenario: Mapping[str, Stat]) -> float:
    """Mean of the deepscaler and hard speed-ups; -inf when easy is slower than uniform or a
    seed did not reach a target."""
    if any(s.reached < s.seeds for s in by_scenario.values()):
        return -math.inf
    if "easy" in by_scenario and by_scenario["easy"].mean < 1.0:
        return -math.inf
    headline = [by_scenario[n].mean for n in ("deepscaler", "hard") if n in by_scenario]
    return float(np.mean(headline)) if headline else -math.inf


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--allocator", required=True, choices=sorted(GRIDS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. seeds-1 per setting and scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated presets")
    parser.add_argument("--settings", help="comma-separated labels of GRIDS[allocator] (default: all); "
                        "labels contain ', ' so separate them with ';'")
    args = parser.parse_args(argv)
    grid = GRIDS[args.allocator]
    labels = [s.strip() for s in args.settings.split(";")] if args.settings else list(grid)
    unknown = [label for label in labels if label not in grid]
    if unknown:
        print(f"error: unknown --settings {unknown}; known for {args.allocator}: {'; '.join(grid)}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        return 2
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    seeds = list(range(args.seeds))
    uniform: dict[tuple[str, int], float] = {}
    started = time.perf_counter()
    rows = []
    with quiet_step_loop():
        for label in labels:
            by_scenario = {name: speed_ups(args.allocator, grid[label], name, seeds, uniform) for name in scenarios}
            rows.append((label, by_scenario, rank_score(by_scenario)))
            cells = " | ".join(s.text("{:.2f}") for s in by_scenario.values())
            print(f"# {label}: {cells} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print(f"`{args.allocator}`, speed-up to target vs uniform (mean ± SD over seeds {seeds[0]}-{seeds[-1]}):\n")
    print("| setting | " + " | ".join(scenarios) + " | rank score |")
    print("|---|" + "---|" * (len(scenarios) + 1))
    for label, by_scenario, score in sorted(rows, key=lambda row: -row[2]):
        cells = " | ".join(s.text("{:.2f}") for s in by_scenario.values())
        print(f"| {label} | {cells} | {score:.2f} |" if math.isfinite(score) else f"| {label} | {cells} | excluded |")
    print(f"\nWall time: {time.perf_counter() - started:.0f} s (one process).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
