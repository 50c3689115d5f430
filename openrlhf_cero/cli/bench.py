"""``python -m openrlhf_cero.cli.bench``: compare rollout allocators on simulated RLVR training.

Examples::

    python -m openrlhf_cero.cli.bench --quick
    python -m openrlhf_cero.cli.bench --allocators uniform,cero,oracle --scenario hard --seeds 5
    python -m openrlhf_cero.cli.bench --scenario deepscaler --scenario-overrides '{"n": 16, "max_samples": 64}'
    python -m openrlhf_cero.cli.bench --allocator-options '{"cero": {"saturation": 16}}'
    python -m openrlhf_cero.cli.bench --write-docs      # regenerates docs/benchmarks.md and docs/figures/
    python -m openrlhf_cero.cli.bench --allocators uniform,uniform+cbs,cero,cero+cbs \
        --scheduler-options '{"cbs": {"buffer_size": 256}}'

Allocators come from the registry (``available_allocators()``), so a newly registered
allocator is benchmarked without changes here. Beside them every table and plot carries
the baselines a user would otherwise pick (``uniform``, ``dynamic_filtering``,
``oversample_even``, ``beta_greedy``: simulator-only entries, :mod:`openrlhf_cero.sim.baselines`)
and ``oracle``, the simulator's bound; each entry's speed-up is given against uniform and
against the best baseline. An entry ``ALLOCATOR+SCHEDULER`` (``uniform+cbs``) runs the
allocator with a rollout scheduler choosing each step's training batch
(``openrlhf_cero.schedulers``; sim/scheduled.py); no entry has one unless it is named so. Runs are spread over ``--jobs`` processes (results do not
depend on it: every run is deterministic for its seed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from openrlhf_cero.allocators.base import AllocatorError, RolloutAllocator
from openrlhf_cero.allocators.registry import allocator_class, available_allocators
from openrlhf_cero.schedulers.base import SchedulerError
from openrlhf_cero.schedulers.registry import scheduler_class
from openrlhf_cero.sim.baselines import BASELINE_NAMES, BASELINES
from openrlhf_cero.sim.entries import entry_options, parse_scheduler_options, run_entry, split_entry
from openrlhf_cero.sim.oracle import OracleAllocator
from openrlhf_cero.sim.runner import ORACLE, RunRecord
from openrlhf_cero.sim.scenario import DEFAULT_SCENARIOS, PRESETS, Scenario, load_overrides, make_scenario
from openrlhf_cero.sim.summary import BASELINE, best_baseline, equal_rollouts, markdown_table, summarise

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_SEEDS = 2
STEP_LOOP_LOGGER = "openrlhf_cero.allocators.step_loop"


def default_allocators() -> list[str]:
    """uniform and the other baselines, every registered allocator, the oracle."""
    registered = [n for n in available_allocators() if n not in BASELINE_NAMES]
    return [*BASELINE_NAMES, *registered, ORACLE]


def entry_class(name: str) -> type[RolloutAllocator]:
    """The class behind a bench entry's allocator: the oracle, a baseline or a registered
    allocator. An entry's scheduler part must name a registered scheduler."""
    name, scheduler = split_entry(name)
    if scheduler is not None:
        try:
            scheduler_class(scheduler)
        except SchedulerError as exc:
            raise AllocatorError(f"bench entry {name}+{scheduler}: {exc}") from None
    if name == ORACLE:
        return OracleAllocator
    if name in BASELINES:
        return BASELINES[name]
    try:
        return allocator_class(name)
    except AllocatorError:
        raise AllocatorError(
            f"unknown --rollout_allocator {name!r}; registered allocators: {', '.join(available_allocators())}; "
            f"baselines: {', '.join(BASELINES)}; and {ORACLE}"
        ) from None


def parse_allocators(text: str | None) -> list[str]:
    if not text:
        return default_allocators()
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        entry_class(name)  # raises AllocatorError naming the valid ones
    if len(set(names)) != len(names):
        raise AllocatorError(f"--allocators lists an allocator twice: {text!r}")
    return names


def parse_allocator_options(text: str | None, allocators: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Options per entry; a bare allocator name's options also apply to its entries with a scheduler."""
    options = load_overrides(text)
    for name, opts in options.items():
        if name not in allocators and name not in {split_entry(a)[0] for a in allocators}:
            raise AllocatorError(
                f"--allocator-options has options for {name!r}, which is not benchmarked; --allocators is "
                f"{','.join(allocators)}"
            )
        if not isinstance(opts, Mapping):
            raise AllocatorError(f"--allocator-options[{name!r}] must be a mapping of option to value, got {opts!r}")
        known = {spec.name for spec in getattr(entry_class(name), "options", ())}
        unknown = sorted(set(opts) - known)
        if unknown and known:
            raise AllocatorError(
                f"unknown option(s) {', '.join(unknown)} for allocator {name!r}; its options: {', '.join(sorted(known))}"
            )
    return {name: dict(opts) for name, opts in options.items()}


@contextlib.contextmanager
def quiet_step_loop() -> Iterator[None]:
    """The step loop warns once per short step; a benchmark counts those steps instead
    (RunRecord.extra["short_steps"], reported under the table)."""
    logger = logging.getLogger(STEP_LOOP_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_one(task: tuple[Scenario, str, int, Mapping[str, Any] | None]) -> tuple[str, int, RunRecord | str]:
    scenario, name, seed, options = task
    with quiet_step_loop():
        try:
            return name, seed, run_entry(scenario, name, seed, options)
        except AllocatorError as exc:
            return name, seed, str(exc)


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


Task = tuple[Scenario, str, int, "Mapping[str, Any] | None"]


def run_tasks(tasks: Sequence[Task], jobs: int = 1, progress: bool = True, desc: str = "") -> dict[tuple[str, str, int], RunRecord | str]:
    """Every (scenario, entry, seed, options) run, over ``jobs`` processes: a record, or the
    message of the AllocatorError it stopped with, keyed by (scenario name, entry, seed). In one
    process, an entry that failed on a seed is not run on the next ones."""
    from tqdm import tqdm

    results: dict[tuple[str, str, int], RunRecord | str] = {}
    total = sum(task[0].total_rollouts for task in tasks)
    with tqdm(total=total, unit="rollout", unit_scale=True, disable=not progress, desc=desc) as bar:
        if jobs <= 1:
            with quiet_step_loop():
                for sc, name, seed, options in tasks:
                    bar.set_postfix_str(f"{name} seed {seed}")
                    before = bar.n
                    if any(isinstance(v, str) for (scn, n, _), v in results.items() if (scn, n) == (sc.name, name)):
                        results[(sc.name, name, seed)] = "skipped after a failure"
                    else:
                        try:
                            results[(sc.name, name, seed)] = run_entry(sc, name, seed, options, on_step=bar.update)
                        except AllocatorError as exc:
                            results[(sc.name, name, seed)] = str(exc)
                    bar.update(max(0, sc.total_rollouts - (bar.n - before)))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for task, (name, seed, result) in zip(tasks, pool.map(_run_one, tasks)):
                    results[(task[0].name, name, seed)] = result
                    bar.set_postfix_str(f"{name} seed {seed}")
                    bar.update(task[0].total_rollouts)
    return results


def collect(
    scenario: Scenario, allocators: Sequence[str], seeds: Sequence[int], results: Mapping[tuple[str, str, int], Any]
) -> tuple[dict[str, list[RunRecord]], dict[str, str]]:
    """Per entry, its runs in seed order, or why it failed (its first failing seed's message)."""
    records: dict[str, list[RunRecord]] = {}
    failures: dict[str, str] = {}
    for name in allocators:
        runs = [results[(scenario.name, name, seed)] for seed in seeds]
        failed = [r for r in runs if isinstance(r, str)]
        if failed:
            failures[name] = failed[0]
        else:
            records[name] = runs  # type: ignore[assignment]
    return records, failures


def run_benchmark(
    scenario: Scenario,
    allocators: Sequence[str],
    seeds: Sequence[int],
    allocator_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    jobs: int = 1,
    scheduler_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, list[RunRecord]], dict[str, str]]:
    """Every entry on every seed, over ``jobs`` processes; returns the records and, per
    entry that failed, why (its first failing seed's message)."""
    tasks = [
        (scenario, name, seed, entry_options(name, allocator_options or {}, scheduler_options or {}))
        for name in allocators for seed in seeds
    ]
    results = run_tasks(tasks, jobs, progress, scenario.name)
    return collect(scenario, allocators, seeds, results)


def report(scenario: Scenario, records: dict[str, list[RunRecord]], failures: Mapping[str, str]) -> str:
    if not records:
        return "no allocator finished a run:\n" + "\n".join(f"- {n}: {m}" for n, m in failures.items())
    text = markdown_table(scenario, summarise(scenario, records), equal_rollouts(records))
    short = {name: sum(r.extra.get("short_steps", 0) for r in runs) for name, runs in records.items()}
    short = {name: count for name, count in short.items() if count}
    if short:
        seeds = len(next(iter(records.values())))
        text += "\n\nSteps that trained less than their budget or needed the allocator's fallback (summed over " \
                f"{seeds} seed(s)): " + ", ".join(f"{name} {count}" for name, count in short.items()) + "."
    if failures:
        text += "\n\nFailed:\n" + "\n".join(f"- {name}: {msg}" for name, msg in failures.items())
    return text


def _against(r, reference: str, reached: int, reference_reached: int) -> str:
    """One clause comparing an entry with ``reference``; ``reached``: seeds on which each reached the target."""
    if r is None or r.reached == 0:
        if reached and not reference_reached:
            return f"reached the target, which {reference} did not"
        if reference_reached and not reached:
            return f"did not reach the target, which {reference} did"
        if not reached:
            return f"neither it nor {reference} reached the target"
        return f"it and {reference} reached the target on different seeds only"
    if abs(r.mean - 1.0) <= max(0.02, r.sd):
        return f"on par with {reference} ({r.mean:.2f}x, within 2% or one SD over seeds)"
    if r.mean > 1.0:
        return f"{r.mean:.2f}x fewer rollouts than {reference}"
    return f"**slower** than {reference}: {1 / r.mean:.2f}x more rollouts"


def verdict(scenario: Scenario, records: dict[str, list[RunRecord]]) -> str:
    """One plain sentence per entry: against uniform and against the best baseline, to the target."""
    summaries = summarise(scenario, records)
    reached = {s.allocator: s.rollouts_to_target.reached for s in summaries}
    best = best_baseline(summaries)
    lines = [f"Best baseline: **{best}**." if best else "Best baseline: none reached the target on every seed."]
    for s in summaries:
        if s.allocator == BASELINE or s.ratio_to_uniform is None:
            continue
        line = f"- {s.allocator}: {_against(s.ratio_to_uniform, 'uniform', reached[s.allocator], reached[BASELINE])}"
        if best and best not in (BASELINE, s.allocator):
            line += "; " + _against(
                s.ratio_to_best_baseline, f"the best baseline ({best})", reached[s.allocator], reached[best]
            )
        lines.append(line + ".")
    return "\n".join(lines)


def glance_table(results: Mapping[str, tuple[Scenario, dict[str, list[RunRecord]]]]) -> list[str]:
    """Speed-ups of every entry in every scenario: vs uniform / vs the best baseline."""
    names: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    best_of: dict[str, str] = {}
    for scenario_name, (scenario, records) in results.items():
        summaries = summarise(scenario, records)
        best_of[scenario_name] = best_baseline(summaries) or "none"
        for s in summaries:
            if s.allocator not in names:
                names.append(s.allocator)
            u, b = s.ratio_to_uniform, s.ratio_to_best_baseline
            cells[(s.allocator, scenario_name)] = (
                f"{u.text('{:.2f}') if u else 'n/a'} / {b.text('{:.2f}') if b else 'n/a'}"
            )
    head = "| entry | " + " | ".join(f"`{n}`: vs uniform / vs {best_of[n]}" for n in results) + " |"
    lines = [head, "|" + "---|" * (len(results) + 1)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cells.get((name, n), "failed") for n in results) + " |")
    return lines


def write_docs(
    seeds: Sequence[int],
    allocators: Sequence[str],
    options: Mapping[str, Mapping[str, Any]],
    progress: bool,
    jobs: int = 1,
) -> Path:
    docs = REPO_ROOT / "docs"
    figures = docs / "figures"
    from openrlhf_cero.sim.plots import plot_all

    start_all = time.perf_counter()
    scenarios = [make_scenario(name) for name in DEFAULT_SCENARIOS]
    # One pool for every scenario's runs, so that no process waits at a scenario's end; the
    # last scenario first, so its (often slowest) runs do not make the tail.
    tasks = [
        (scenario, name, seed, entry_options(name, options, {})) for scenario in reversed(scenarios) for name in allocators
        for seed in seeds
    ]
    all_results = run_tasks(tasks, jobs, progress, "write-docs")
    sections: list[str] = []
    results: dict[str, tuple[Scenario, dict[str, list[RunRecord]]]] = {}
    for scenario in scenarios:
        name = scenario.name
        records, failures = collect(scenario, allocators, seeds, all_results)
        run_seconds = sum(r.extra.get("wall_seconds", 0.0) for runs in records.values() for r in runs)
        sections += [f"## Scenario `{name}`", "", "```json", json.dumps(scenario.to_dict()), "```", ""]
        sections += [report(scenario, records, failures), ""]
        if records:
            results[name] = (scenario, records)
            sections += [verdict(scenario, records), ""]
            for path in plot_all(scenario, records, figures, name):
                sections.append(f"![{path.stem}](figures/{path.name})")
            sections.append("")
        sections.append(f"Run time of this scenario's runs, summed: {run_seconds:.0f} s.")
        sections.append("")
    parts = [
        "# Benchmarks (simulator)",
        "",
        "Generated by `python -m openrlhf_cero.cli.bench --write-docs` (do not edit by hand; rerun it).",
        "Simulated RLVR training, CPU only; see [simulator.md](simulator.md) for the model, its calibration",
        "and its limits. These are simulator figures, not GPU training results. The simulated policy",
        "follows the gradient of OpenRLHF's policy loss (token-mean), so a group teaches in proportion to",
        "its number of samples. **Not confirmed on a real policy**: checked against a real small-model GRPO",
        "run (8 seeds), this model ranks the entries almost in reverse, and there no allocator beats uniform",
        "([simulator.md](simulator.md), \"Validated against the real run\"; [benchmarks-small-model.md](benchmarks-small-model.md)).",
        "",
        f"Entries: {', '.join(allocators)}. Seeds: {', '.join(map(str, seeds))}.",
        "Baselines (simulator-only, what a user would otherwise pick): uniform (stock OpenRLHF),",
        "dynamic_filtering (`--algo.dynamic_filtering_enable`), oversample_even (3x the prompts, budget",
        "split evenly), beta_greedy (Beta posterior with forgetting, greedy on expected rollouts in",
        "mixed-reward groups, 2x the prompts). oracle: knows the latent pass rates, chooses prompts",
        "from 4x the pool and their group sizes for the best expected one-step gain: the bound.",
        "",
        "## At a glance: speed-up to the target (x), against uniform / against the best baseline",
        "",
    ]
    parts += glance_table(results) + [
        "",
        "Mean over seeds of the per-seed ratio of rollouts to the scenario's target; > 1 means fewer rollouts.",
        "The best baseline of each scenario is named in its column.",
        "",
    ]
    parts += calibration_section() + [""] + sections
    parts.append(f"Total wall time of `--write-docs`: {time.perf_counter() - start_all:.0f} s ({jobs} process(es)).")
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
    p.add_argument(
        "--allocators",
        help="comma-separated; default: the baselines (uniform, dynamic_filtering, oversample_even, beta_greedy), "
        "every registered allocator, and oracle",
    )
    p.add_argument("--scenario", default="deepscaler", help=f"preset: {', '.join(PRESETS)}")
    p.add_argument("--scenario-overrides", help="JSON/YAML mapping (inline or a file) of scenario keys")
    p.add_argument("--allocator-options", help='JSON/YAML mapping {"allocator": {"option": value}} (inline or file)')
    p.add_argument(
        "--scheduler-options",
        help='JSON/YAML mapping {"scheduler": {"setting": value}} for entries ALLOCATOR+SCHEDULER, e.g. '
        '{"cbs": {"buffer_size": 256}}',
    )
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (runs per allocator)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help=f"scenario 'quick' and {QUICK_SEEDS} seeds: for CI, < 10 s")
    p.add_argument("--jobs", type=int, default=default_jobs(), help="processes for the runs (default: the CPU count, at most 8)")
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
        if args.jobs < 1:
            raise AllocatorError(f"--jobs must be >= 1, got {args.jobs}")
        allocators = parse_allocators(args.allocators)
        options = parse_allocator_options(args.allocator_options, allocators)
        schedulers = parse_scheduler_options(args.scheduler_options, allocators)
        seeds = list(range(args.first_seed, args.first_seed + (min(args.seeds, QUICK_SEEDS) if args.quick else args.seeds)))
        if args.write_docs:
            print(f"wrote {write_docs(seeds, allocators, options, not args.no_progress, args.jobs)}")
            return 0
        scenario = make_scenario("quick" if args.quick else args.scenario, load_overrides(args.scenario_overrides))
        records, failures = run_benchmark(scenario, allocators, seeds, options, not args.no_progress, args.jobs, schedulers)
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
