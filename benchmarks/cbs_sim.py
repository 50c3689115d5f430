"""Measure the ``cbs`` rollout scheduler on the simulator: raw runs, then a table with intervals.

Why a script beside ``cli.bench``: the bench table gives mean ± SD; the claim "an entry with
cbs needs fewer rollouts than without" needs a paired interval per seed, and the buffer
sweep needs runs of one entry under several scheduler settings. ``run`` writes one
scenario's bench table (as ``cli.bench`` prints it) and the raw per-seed figures (JSON);
``report`` reads those JSON files and writes the intervals. Every run is deterministic for
its seed; torch is held to one thread (the scorer is small and the machine is shared).

    python benchmarks/cbs_sim.py run --scenario deepscaler --overrides '{"epochs": 20, "target": 0.379}' \\
        --entries uniform,uniform+cbs --seeds 5 --out docs/results/cbs_sim/deepscaler
    python benchmarks/cbs_sim.py report docs/results/cbs_sim/deepscaler.json > docs/results/cbs_sim/summary.md
    python benchmarks/cbs_sim.py report --sweep docs/results/cbs_sim/deepscaler_buffer_*.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from openrlhf_cero.cli.bench import report as bench_report
from openrlhf_cero.cli.bench import run_benchmark, verdict
from openrlhf_cero.sim.runner import RunRecord
from openrlhf_cero.sim.scenario import load_overrides, make_scenario
from openrlhf_cero.sim.summary import rollouts_to_target

REPO = Path(__file__).resolve().parents[1]
SCHEDULER_FIGURES = ("reuse_share", "mean_staleness", "reused", "clipped", "select_seconds", "feedback_seconds")


def raw_figures(record: RunRecord, metric: str, target: float) -> dict[str, Any]:
    """What the report needs of one run, plain JSON."""
    steps = record.steps
    out: dict[str, Any] = {
        "seed": record.seed,
        "rollouts_to_target": rollouts_to_target(record, metric, target),
        "rollouts_drawn": int(record.cum_rollouts[-1]),
        "final_train_pass_rate": float(record.train_pass_rate[-1]),
        "steps": steps,
        "wall_seconds_per_step": record.extra["wall_seconds"] / max(steps, 1),
    }
    for key in SCHEDULER_FIGURES:
        values = record.extra.get("scheduler", {}).get(key)
        if values is not None:
            out[key] = float(np.mean(values))
    fill = record.extra.get("scheduler", {}).get("buffer_size")  # cbs's metric: rollouts held after the step
    if fill is not None:
        out["buffer_fill"] = float(np.mean(fill))
    return out


def provenance() -> dict[str, str]:
    """The commit and a hash of the cbs sources as this run imported them (the scheduler may be
    edited in the work tree between commits)."""
    import hashlib
    import subprocess

    digest = hashlib.sha256()
    for path in sorted((REPO / "openrlhf_cero" / "schedulers" / "cbs").glob("*.py")):
        digest.update(path.read_bytes())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"head": head, "cbs_sources_sha256": digest.hexdigest()}


def run(args: argparse.Namespace) -> int:
    import torch

    from openrlhf_cero.schedulers.registry import create_scheduler

    torch.set_num_threads(1)
    create_scheduler("cbs", seed=0)  # imports and first optimizer set-up outside every run's wall time
    origin = provenance()
    scenario = make_scenario(args.scenario, load_overrides(args.overrides))
    entries = [e.strip() for e in args.entries.split(",") if e.strip()]
    scheduler_options = load_overrides(args.scheduler_options)
    seeds = list(range(args.seeds))
    records, failures = run_benchmark(
        scenario, entries, seeds, None, progress=not args.no_progress, jobs=1, scheduler_options=scheduler_options
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = bench_report(scenario, records, failures)
    if records:
        table += "\n\n" + verdict(scenario, records)
    out.parent.joinpath(out.name + ".md").write_text(table + "\n")  # not with_suffix: labels may hold dots
    raw = {
        "scenario": scenario.to_dict(),
        "label": out.name,
        "scheduler_options": scheduler_options,
        "command": " ".join(sys.argv),
        **origin,
        "failures": failures,
        "entries": {name: [raw_figures(r, scenario.metric, scenario.target) for r in runs] for name, runs in records.items()},
    }
    out.parent.joinpath(out.name + ".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(table)
    return 0 if not failures else 1


def interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean, two-sided t-interval and count of the finite values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0
    if v.size == 1:
        return float(v[0]), -math.inf, math.inf, 1
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half), int(v.size)


def ratio_text(reference: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """Paired speed-up reference / entry (> 1: fewer rollouts) with its 95% t-interval; says when
    the interval includes 1.0 and on how many seeds both reached the target."""
    by_seed = {r["seed"]: r["rollouts_to_target"] for r in reference}
    ratios = [by_seed.get(r["seed"], math.nan) / r["rollouts_to_target"] if r["rollouts_to_target"] > 0 else math.nan
              for r in runs]
    mean, low, high, n = interval(ratios)
    if n == 0:
        return "not reached"
    if reference is runs:
        return "1.00 (reference)"
    if n == 1:
        return f"{mean:.2f} (1/{len(runs)} seeds, no interval)"
    body = f"{mean:.2f} [{low:.2f}, {high:.2f}]" + (" (includes 1.0)" if low <= 1.0 <= high else "")
    return body if n == len(runs) else f"{body} ({n}/{len(runs)} seeds)"


def report(paths: Sequence[str]) -> str:
    lines: list[str] = []
    for path in paths:
        raw = json.loads(Path(path).read_text())
        entries = raw["entries"]
        sc = raw["scenario"]
        lines += [
            f"## {raw['label']}: scenario `{sc['name']}` (epochs {sc['epochs']:g}, target {sc['target']:g}, "
            f"{len(next(iter(entries.values())))} seeds)",
            "",
            f"Command: `{raw['command']}`",
            "",
            "| entry | rollouts to target (mean ± SD) | speed-up vs uniform [95% CI] | with cbs vs without [95% CI] "
            "| reuse share | mean staleness | clipped per step | wall ms / step | scheduler ms / step |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, runs in entries.items():
            cost = [r["rollouts_to_target"] for r in runs]
            finite = [c for c in cost if math.isfinite(c)]
            cost_text = "not reached" if not finite else (
                f"{np.mean(finite):,.0f} ± {np.std(finite, ddof=1) if len(finite) > 1 else 0:,.0f}"
                + ("" if len(finite) == len(cost) else f" ({len(finite)}/{len(cost)} reached)"))
            base = name.split("+")[0]
            paired = ratio_text(entries[base], runs) if "+" in name and base in entries else ""
            vs_uniform = ratio_text(entries["uniform"], runs) if "uniform" in entries else "n/a"
            sched = lambda key, scale=1.0, fmt="{:.2f}": (  # noqa: E731
                fmt.format(scale * np.mean([r[key] for r in runs])) if key in runs[0] else "")
            sched_ms = (f"{1000 * np.mean([r['select_seconds'] + r['feedback_seconds'] for r in runs]):.1f}"
                        if "select_seconds" in runs[0] else "")
            lines.append(
                f"| {name} | {cost_text} | {vs_uniform} | {paired} | {sched('reuse_share')} | {sched('mean_staleness')} "
                f"| {sched('clipped', fmt='{:.1f}')} | {1000 * np.mean([r['wall_seconds_per_step'] for r in runs]):.1f} "
                f"| {sched_ms} |"
            )
        if raw["failures"]:
            lines += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in raw["failures"].items())]
        lines.append("")
    return "\n".join(lines)


def sweep_report(paths: Sequence[str], entry: str = "uniform+cbs") -> str:
    """One row per file: the scheduler settings of ``entry`` and its speed-up over uniform (same file, same seeds)."""
    lines = [
        f"| run | buffer_size | max_staleness | max_reuse_share | {entry}: rollouts to target "
        "| speed-up vs uniform [95% CI] | mean buffer fill | reuse share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        raw = json.loads(Path(path).read_text())
        runs, options = raw["entries"][entry], raw["scheduler_options"].get("cbs", {})
        cost = [r["rollouts_to_target"] for r in runs if math.isfinite(r["rollouts_to_target"])]
        fill = f"{np.mean([r['buffer_fill'] for r in runs]):,.0f}" if "buffer_fill" in runs[0] else "n/a"
        lines.append(
            f"| {raw['label']} | {options.get('buffer_size', 1024)} | {options.get('max_staleness', 4)} "
            f"| {options.get('max_reuse_share', 0.25)} "
            f"| {np.mean(cost):,.0f} ({len(cost)}/{len(runs)} reached) | {ratio_text(raw['entries']['uniform'], runs)} "
            f"| {fill} | {np.mean([r['reuse_share'] for r in runs]):.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--scenario", required=True)
    r.add_argument("--overrides")
    r.add_argument("--entries", required=True)
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--scheduler-options")
    r.add_argument("--out", required=True, help="path without suffix: OUT.md and OUT.json are written")
    r.add_argument("--no-progress", action="store_true")
    q = sub.add_parser("report")
    q.add_argument("paths", nargs="+")
    q.add_argument("--sweep", action="store_true", help="one row per file: uniform+cbs under each file's settings")
    args = p.parse_args(argv)
    if args.command == "run":
        return run(args)
    print(sweep_report(args.paths) if args.sweep else report(args.paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
