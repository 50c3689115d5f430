"""``python -m openrlhf_cero.cli.bench``: compare rollout allocators on simulated RLVR training.

Examples::

    python -m openrlhf_cero.cli.bench --quick
    python -m openrlhf_cero.cli.bench --allocators uniform,cero,oracle --scenario hard --seeds 5
    python -m openrlhf_cero.cli.bench --scenario deepscaler --scenario-overrides '{"n": 16, "max_samples": 64}'
    python -m openrlhf_cero.cli.bench --allocator-options '{"cero": {"saturation": 16}}'
    python -m openrlhf_cero.cli.bench --write-docs      # regenerates docs/benchmarks.md and docs/figures/

Allocators come from the registry (``available_allocators()``), so a newly registered
allocator is benchmarked without changes here; ``oracle`` is the simulator's reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.allocators.registry import allocator_class, available_allocators
from openrlhf_cero.sim.runner import ORACLE, RunRecord, run_allocator
from openrlhf_cero.sim.scenario import DEFAULT_SCENARIOS, PRESETS, Scenario, load_overrides, make_scenario
from openrlhf_cero.sim.summary import BASELINE, equal_rollouts, markdown_table, summarise

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_SEEDS = 2


def default_allocators() -> list[str]:
    names = available_allocators()
    names = [BASELINE] + [n for n in names if n != BASELINE] if BASELINE in names else names
    return names + [ORACLE]


def parse_allocators(text: str | None) -> list[str]:
    if not text:
        return default_allocators()
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name != ORACLE:
            allocator_class(name)  # raises AllocatorError naming the registered ones
    if len(set(names)) != len(names):
        raise AllocatorError(f"--allocators lists an allocator twice: {text!r}")
    return names


def parse_allocator_options(text: str | None, allocators: Sequence[str]) -> dict[str, dict[str, Any]]:
    options = load_overrides(text)
    for name, opts in options.items():
        if name not in allocators:
            raise AllocatorError(
                f"--allocator-options has options for {name!r}, which is not benchmarked; --allocators is "
                f"{','.join(allocators)}"
            )
        if not isinstance(opts, Mapping):
            raise AllocatorError(f"--allocator-options[{name!r}] must be a mapping of option to value, got {opts!r}")
        if name != ORACLE:
            known = {spec.name for spec in getattr(allocator_class(name), "options", ())}
            unknown = sorted(set(opts) - known)
            if unknown and known:
                raise AllocatorError(
                    f"unknown option(s) {', '.join(unknown)} for allocator {name!r}; its options: {', '.join(sorted(known))}"
                )
    return {name: dict(opts) for name, opts in options.items()}


def run_benchmark(
    scenario: Scenario,
    allocators: Sequence[str],
    seeds: Sequence[int],
    allocator_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> tuple[dict[str, list[RunRecord]], dict[str, str]]:
    """Every allocator on every seed; returns the records and, per allocator that failed, why."""
    from tqdm import tqdm

    records: dict[str, list[RunRecord]] = {}
    failures: dict[str, str] = {}
    total = len(allocators) * len(seeds) * scenario.total_rollouts
    with tqdm(total=total, unit="rollout", unit_scale=True, disable=not progress, desc=scenario.name) as bar:
        for name in allocators:
            runs = []
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                try:
                    runs.append(
                        run_allocator(
                            scenario, name, seed, (allocator_options or {}).get(name), on_step=bar.update
                        )
                    )
                except AllocatorError as exc:
                    failures[name] = str(exc)
                    break
            if name not in failures:
                records[name] = runs
            bar.update(max(0, len(seeds) * scenario.total_rollouts - sum(int(r.cum_rollouts[-1]) for r in runs)))
    return records, failures


def report(scenario: Scenario, records: dict[str, list[RunRecord]], failures: Mapping[str, str]) -> str:
    if not records:
        return "no allocator finished a run:\n" + "\n".join(f"- {n}: {m}" for n, m in failures.items())
    text = markdown_table(scenario, summarise(scenario, records), equal_rollouts(records))
    if failures:
        text += "\n\nFailed:\n" + "\n".join(f"- {name}: {msg}" for name, msg in failures.items())
    return text


def verdict(scenario: Scenario, records: dict[str, list[RunRecord]]) -> str:
    """One plain sentence per allocator: faster or slower than uniform to the target."""
    lines = []
    for s in summarise(scenario, records):
        if s.allocator == BASELINE or s.ratio_to_uniform is None:
            continue
        r = s.ratio_to_uniform
        if r.reached == 0:
            lines.append(f"- {s.allocator}: did not reach the target where uniform did (or neither did).")
        elif abs(r.mean - 1.0) <= max(0.02, r.sd):
            lines.append(f"- {s.allocator}: on par with uniform ({r.mean:.2f}x, within 2% or one SD over seeds).")
        elif r.mean > 1.0:
            lines.append(f"- {s.allocator}: {r.mean:.2f}x fewer rollouts than uniform to the target.")
        else:
            lines.append(f"- {s.allocator}: **slower** than uniform: {1 / r.mean:.2f}x more rollouts to the target.")
    return "\n".join(lines)


def write_docs(
    seeds: Sequence[int], allocators: Sequence[str], options: Mapping[str, Mapping[str, Any]], progress: bool
) -> Path:
    docs = REPO_ROOT / "docs"
    figures = docs / "figures"
    from openrlhf_cero.sim.plots import plot_all

    parts = [
        "# Benchmarks (simulator)",
        "",
        "Generated by `python -m openrlhf_cero.cli.bench --write-docs` (do not edit by hand; rerun it).",
        "Simulated RLVR training, CPU only; see [simulator.md](simulator.md) for the model, its calibration",
        "and its limits. These are simulator figures, not GPU training results.",
        "",
        f"Allocators: {', '.join(allocators)}. Seeds: {', '.join(map(str, seeds))}.",
        "",
    ]
    parts += calibration_section() + [""]
    for name in DEFAULT_SCENARIOS:
        scenario = make_scenario(name)
        start = time.perf_counter()
        records, failures = run_benchmark(scenario, allocators, seeds, options, progress)
        elapsed = time.perf_counter() - start
        parts += [f"## Scenario `{name}`", "", "```json", json.dumps(scenario.to_dict()), "```", ""]
        parts += [report(scenario, records, failures), ""]
        if records:
            parts += [verdict(scenario, records), ""]
            for path in plot_all(scenario, records, figures, name):
                parts.append(f"![{path.stem}](figures/{path.name})")
            parts.append("")
        parts.append(f"Benchmark wall time for this scenario: {elapsed:.0f} s.")
        parts.append("")
    out = docs / "benchmarks.md"
    out.write_text("\n".join(parts))
    return out


def calibration_section() -> list[str]:
    from openrlhf_cero.sim.calibration import PUBLISHED, calibration_report

    measured = calibration_report()
    lines = [
        "## Calibration of the `deepscaler` preset (uniform, n=8, seed 0)",
        "",
        "| figure | published | accepted | measured | source |",
        "|---|---|---|---|---|",
    ]
    for key, fig in PUBLISHED.items():
        published = f"{fig.low:g}" if fig.low == fig.high else f"{fig.low:g}-{fig.high:g}"
        ok = "yes" if fig.accepts(measured[key]) else "**no**"
        lines.append(
            f"| {key} | {published} | ±{fig.tolerance:g} ({ok}) | {measured[key]:.4f} | {fig.source} |"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m openrlhf_cero.cli.bench", description=__doc__.split("\n")[0])
    p.add_argument("--allocators", help="comma-separated; default: every registered allocator + oracle")
    p.add_argument("--scenario", default="deepscaler", help=f"preset: {', '.join(PRESETS)}")
    p.add_argument("--scenario-overrides", help="JSON/YAML mapping (inline or a file) of scenario keys")
    p.add_argument("--allocator-options", help='JSON/YAML mapping {"allocator": {"option": value}} (inline or file)')
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (runs per allocator)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help=f"scenario 'quick' and {QUICK_SEEDS} seeds: for CI, < 1 min")
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="folder for the table and PNG plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="regenerate docs/benchmarks.md for the default scenarios")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.seeds < 1:
            raise AllocatorError(f"--seeds must be >= 1, got {args.seeds}")
        allocators = parse_allocators(args.allocators)
        options = parse_allocator_options(args.allocator_options, allocators)
        seeds = list(range(args.first_seed, args.first_seed + (min(args.seeds, QUICK_SEEDS) if args.quick else args.seeds)))
        if args.write_docs:
            print(f"wrote {write_docs(seeds, allocators, options, not args.no_progress)}")
            return 0
        scenario = make_scenario("quick" if args.quick else args.scenario, load_overrides(args.scenario_overrides))
        records, failures = run_benchmark(scenario, allocators, seeds, options, not args.no_progress)
    except AllocatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report(scenario, records, failures)
    print(text)
    if records:
        print(verdict(scenario, records))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{scenario.name}.md").write_text(text + "\n")
    if records and not args.no_plots:
        from openrlhf_cero.sim.plots import plot_all

        for path in plot_all(scenario, records, args.out, scenario.name):
            print(f"plot: {path}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
