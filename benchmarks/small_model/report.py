"""Statistics over seeds with 95% confidence intervals, the page's tables, and the plots.

Every figure of docs/benchmarks-small-model.md comes from :func:`markdown_report` (and
:func:`sweep_table` for the learning-rate sweep) applied to the committed results JSON; a test
checks that the page's tables equal what these functions print, so the page cannot drift.

Comparisons against uniform are paired by seed: the same seed gives the same prompt order and
sampling seed, so the per-seed difference removes the variation that all runs share. Intervals
are Student-t over seeds (ratios: t on the log, exponentiated).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

METRICS = (("train", "train"), ("held_out", "held-out"))
SAMPLED = (("train_sampled", "train sampled"), ("held_out_sampled", "held-out sampled"))


def metrics_of(results: dict) -> tuple[tuple[str, str], ...]:
    """Greedy accuracies always; the sampled ones (``eval_samples`` > 0) when the runs have them."""
    runs = finished_runs(results)
    sampled = bool(runs) and all(m in runs[0]["evals"][0] for m, _ in SAMPLED)
    return METRICS + (SAMPLED if sampled else ())
NOISE_MULTIPLE = 3.0  # the target's gain over the start must be at least this many eval-noise SDs


# Per-step fields kept in the committed results (the rest are timings of the shared CPU).
STEP_FIELDS = ("rollouts", "drawn", "trained", "groups", "mixed_groups", "mixed_rollouts", "zero_variance_share",
               "cycles", "mean_reward", "allocator_seconds", "epoch")
# Kept too where a run has them: what a scheduler (entry ALLOCATOR+SCHEDULER) did each step, and
# the step's timings, which the scheduler comparison reports (wall time per step with and without).
SCHEDULER_STEP_FIELDS = ("trained_fresh", "trained_reused", "buffered", "reused_clipped_token_share", "mean_gain",
                         "scheduler_seconds", "gain_seconds", "draw_seconds", "update_seconds", "step_seconds")


def steps_of(run: dict) -> list[dict]:
    """A run's per-step records, whether stored as rows (as run) or as columns (compacted)."""
    steps = run.get("steps", [])
    if isinstance(steps, dict):
        names = list(steps)
        return [dict(zip(names, values)) for values in zip(*(steps[n] for n in names))]
    return steps


def compact(results: dict) -> dict:
    """The results with each run's steps as rounded columns of STEP_FIELDS: a file small enough
    to commit beside the page (about 15 KB per run), from which every figure is recomputed."""
    out = dict(results)
    if "warmup" in results:
        # The warm-up's table covers every training prompt of the warm-up task; the committed file
        # keeps, under the same key, the table of the prompts GRPO trains on (what a simulated
        # twin of the run needs), and the RL set sizes beside it.
        out["warmup"] = {k: v for k, v in results["warmup"].items() if k not in ("train_prompts", "history")}
        out["warmup"]["train_prompts"] = results.get("train_prompts", results["warmup"].get("train_prompts"))
        out.pop("train_prompts", None)
    out["runs"] = {}
    for key, run in results["runs"].items():
        rows = steps_of(run)
        fields = list(STEP_FIELDS)
        if rows and any(f in rows[0] for f in ("trained_fresh", "step_seconds")):
            fields += list(SCHEDULER_STEP_FIELDS)
            fields += sorted(f for f in rows[0] if f.startswith("scheduler_") and f not in fields)
        columns = {f: [round(s[f], 5) if isinstance(s[f], float) else s[f] for s in rows] for f in fields
                   if rows and f in rows[0]}
        out["runs"][key] = {**run, "steps": columns}
    return out


# ── curves ────────────────────────────────────────────────────────────────────────────


def curve(run: dict, metric: str, x: str = "rollouts") -> tuple[np.ndarray, np.ndarray]:
    """Evaluation curve of ``metric`` against ``x`` ("rollouts" drawn or optimizer "step")."""
    return (np.array([e[x] for e in run["evals"]], dtype=float), np.array([e[metric] for e in run["evals"]], dtype=float))


def value_at(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """Linear interpolation at ``at``; nan beyond the curve's end."""
    return float(np.interp(at, x, y)) if x.size and at <= x[-1] else float("nan")


def mean_over(x: np.ndarray, y: np.ndarray, upto: float) -> float:
    """Area under the curve on [0, upto] divided by ``upto``: the mean accuracy over the run
    (trapezoid on the evaluations, the end point interpolated)."""
    if not x.size or upto > x[-1] or upto <= 0:
        return float("nan")
    inside = x < upto
    xs = np.append(x[inside], upto)
    ys = np.append(y[inside], np.interp(upto, x, y))
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / upto)


def rollouts_to_target(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Rollouts at which the curve first reaches ``target`` (linear between evaluations); nan if never."""
    above = np.flatnonzero(y >= target)
    if not above.size:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))


# ── intervals ─────────────────────────────────────────────────────────────────────────


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t interval over the non-nan values: (mean, low, high, count)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not v.size:
        return (float("nan"),) * 3 + (0,)
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan"), int(v.size)
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half, int(v.size)


def ratio_interval(ratios: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Geometric mean and t interval of positive ratios (t on the log scale)."""
    r = np.asarray(ratios, dtype=float)
    r = r[np.isfinite(r) & (r > 0)]
    mean, low, high, count = t_interval(np.log(r), level)
    return float(np.exp(mean)), float(np.exp(low)), float(np.exp(high)), count


def excludes(low: float, high: float, value: float) -> str:
    """'yes' when the interval lies wholly on one side of ``value`` (no difference excluded)."""
    if np.isnan(low) or np.isnan(high):
        return "n/a"
    return "yes" if low > value or high < value else "no"


def fmt_ci(stat: tuple[float, float, float, int], fmt: str, sign: bool = False) -> str:
    mean, low, high, count = stat
    if count == 0:
        return "n/a"
    f = ("+" if sign else "") + fmt
    if np.isnan(low):
        return format(mean, f)
    return f"{format(mean, f)} [{format(low, f)}, {format(high, f)}]"


# ── summary ───────────────────────────────────────────────────────────────────────────


def finished_runs(results: dict) -> list[dict]:
    return [r for r in results["runs"].values() if r.get("evals")]


def allocator_names(runs: list[dict]) -> list[str]:
    names = list(dict.fromkeys(r["allocator"] for r in runs))
    return sorted(names, key=lambda n: (n != "uniform",))  # uniform first, then as run


def eval_noise(uniform: list[dict], metric: str, equal_at: float) -> float:
    """SD of one evaluation's accuracy around the trend, from uniform's late curve: the SD of
    differences between consecutive evaluations in the second half of the run, over sqrt(2)
    (two independent errors per difference; slow learning left in it only makes it larger)."""
    diffs = []
    for r in uniform:
        x, y = curve(r, metric)
        late = y[(x >= equal_at / 2) & (x <= equal_at)]
        diffs.extend(np.diff(late).tolist())
    return float(np.std(diffs, ddof=1) / np.sqrt(2)) if len(diffs) > 1 else float("nan")


def summarise(results: dict, metric: str = "train", gain_share: float = 0.75) -> dict[str, Any]:
    """Per allocator and seed: accuracy at equal rollouts (final and mean over the run), the
    paired differences against uniform, rollouts to a target set on uniform's gain, and the
    diagnostics; plus the statistics over seeds."""
    runs = finished_runs(results)
    uniform = [r for r in runs if r["allocator"] == "uniform"]
    if not uniform:
        return {}
    equal_at = float(min(r["evals"][-1]["rollouts"] for r in runs))
    equal_steps = float(min(r["evals"][-1]["step"] for r in runs))
    start = float(np.mean([r["evals"][0][metric] for r in uniform]))
    uniform_final = float(np.mean([value_at(*curve(r, metric), equal_at) for r in uniform]))
    noise = eval_noise(uniform, metric, equal_at)
    margin = gain_share * (uniform_final - start)
    has_target = bool(np.isfinite(noise) and margin > 0 and margin >= NOISE_MULTIPLE * noise)
    target = start + margin if has_target else float("nan")
    by_seed_uniform = {r["seed"]: r for r in uniform}

    def per_run(r: dict) -> dict[str, float]:
        x, y = curve(r, metric)
        xs, ys = curve(r, metric, "step")
        steps = steps_of(r)
        drawn = sum(s["drawn"] for s in steps)
        return {
            "final": value_at(x, y, equal_at),
            "auc": mean_over(x, y, equal_at),
            "to_target": rollouts_to_target(x, y, target) if has_target else float("nan"),
            "at_equal_steps": value_at(xs, ys, equal_steps),
            "optimizer_steps": float(r.get("optimizer_steps", len(steps))),
            "zero_variance_share": float(np.mean([s["zero_variance_share"] for s in steps])) if steps else float("nan"),
            "effective_ratio": sum(s["mixed_rollouts"] for s in steps) / max(1, drawn),
            "allocator_ms_per_step": 1000 * float(np.mean([s["allocator_seconds"] for s in steps])) if steps else float("nan"),
            "wall_seconds": float(r.get("wall_seconds", float("nan"))),
        }

    uniform_values = {seed: per_run(r) for seed, r in by_seed_uniform.items()}
    table: dict[str, Any] = {}
    for name in allocator_names(runs):
        mine = sorted((r for r in runs if r["allocator"] == name), key=lambda r: r["seed"])
        values = {r["seed"]: per_run(r) for r in mine}
        paired = [s for s in values if s in uniform_values]
        diff = {k: [values[s][k] - uniform_values[s][k] for s in paired] for k in ("final", "auc")}
        speedup = [uniform_values[s]["to_target"] / values[s]["to_target"] if values[s]["to_target"] > 0 else float("nan")
                   for s in paired]
        row: dict[str, Any] = {"seeds": sorted(values), "per_seed": values}
        for k in next(iter(values.values())):
            row[k] = t_interval([v[k] for v in values.values()])
        row["final_diff"] = t_interval(diff["final"])
        row["auc_diff"] = t_interval(diff["auc"])
        row["speedup"] = ratio_interval(speedup)
        row["reached"] = int(sum(np.isfinite(v["to_target"]) for v in values.values()))
        table[name] = row
    return {"metric": metric, "start": start, "uniform_final": uniform_final, "noise": noise, "margin": margin,
            "has_target": has_target, "target": target, "gain_share": gain_share, "equal_rollouts": equal_at,
            "equal_steps": equal_steps, "allocators": table}


# ── tables ────────────────────────────────────────────────────────────────────────────


def accuracy_table(summary: dict, label: str) -> str:
    lines = [
        f"| allocator | seeds | {label} acc. at {summary['equal_rollouts']:,.0f} rollouts | Δ vs uniform (paired) "
        f"| excludes 0 | mean {label} acc. over the run (AUC) | Δ AUC vs uniform (paired) | excludes 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["allocators"].items():
        if name == "uniform":
            d_final = d_auc = "—"
            x_final = x_auc = "—"
        else:
            d_final, d_auc = fmt_ci(row["final_diff"], ".3f", True), fmt_ci(row["auc_diff"], ".3f", True)
            x_final, x_auc = excludes(*row["final_diff"][1:3], 0.0), excludes(*row["auc_diff"][1:3], 0.0)
        lines.append(f"| {name} | {len(row['seeds'])} | {fmt_ci(row['final'], '.3f')} | {d_final} | {x_final} "
                     f"| {fmt_ci(row['auc'], '.3f')} | {d_auc} | {x_auc} |")
    return "\n".join(lines)


def target_lines(summary: dict, label: str) -> str:
    head = (f"Start {summary['start']:.3f}; uniform reaches {summary['uniform_final']:.3f} at "
            f"{summary['equal_rollouts']:,.0f} rollouts (gain {summary['uniform_final'] - summary['start']:+.3f}). "
            f"Evaluation noise (SD of one {label} evaluation, from uniform's late curve): {summary['noise']:.4f}.")
    if not summary["has_target"]:
        return (head + f" {summary['gain_share']:.0%} of uniform's gain is {summary['margin']:+.3f}, less than "
                f"{NOISE_MULTIPLE:.0f} noise SDs: uniform does not improve clearly, so no rollouts-to-target is reported.")
    lines = [
        head + f" Target: {summary['target']:.3f} = start + {summary['gain_share']:.0%} of uniform's gain "
        + (f"({summary['margin'] / summary['noise']:.1f} noise SDs above the start)." if summary["noise"] > 0
           else "(the evaluations showed no noise)."),
        "",
        "| allocator | seeds reaching the target | rollouts to target | speed-up vs uniform (paired, x) | excludes 1 |",
        "|---|---|---|---|---|",
    ]
    for name, row in summary["allocators"].items():
        speed = "1.00" if name == "uniform" else fmt_ci(row["speedup"], ".2f")
        excl = "—" if name == "uniform" else excludes(*row["speedup"][1:3], 1.0)
        if name != "uniform" and row["speedup"][3] < len(row["seeds"]):
            speed += f" (over {row['speedup'][3]} pairs that both reached it)"
        lines.append(f"| {name} | {row['reached']} of {len(row['seeds'])} | {fmt_ci(row['to_target'], ',.0f')} "
                     f"| {speed} | {excl} |")
    return "\n".join(lines)


def diagnostics_table(summary: dict, label: str) -> str:
    lines = [
        f"| allocator | optimizer steps | {label} acc. at {summary['equal_steps']:.0f} optimizer steps "
        "| zero-variance share (trained groups) | effective-rollout ratio | allocator ms / step | wall time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["allocators"].items():
        lines.append(
            f"| {name} | {fmt_ci(row['optimizer_steps'], '.0f')} | {fmt_ci(row['at_equal_steps'], '.3f')} "
            f"| {fmt_ci(row['zero_variance_share'], '.3f')} | {fmt_ci(row['effective_ratio'], '.3f')} "
            f"| {fmt_ci(row['allocator_ms_per_step'], '.1f')} | {fmt_ci(row['wall_seconds'], '.0f')} |"
        )
    return "\n".join(lines)


def markdown_report(results: dict, gain_share: float = 0.75) -> str:
    """Every table of the results section, as the page shows it."""
    parts = []
    for metric, label in metrics_of(results):
        s = summarise(results, metric, gain_share)
        if not s:
            return "No uniform run: nothing to compare against."
        parts += [f"#### {label.capitalize()} accuracy", "", accuracy_table(s, label), "", target_lines(s, label), ""]
    s = summarise(results, "train", gain_share)
    parts += ["#### Diagnostics", "", diagnostics_table(s, "train"), ""]
    seeds = sorted({seed for row in s["allocators"].values() for seed in row["seeds"]})
    parts.append(f"Mean [95% t interval] over seeds {', '.join(map(str, seeds))}; Δ and speed-up are paired by seed "
                 "(same seed = same prompt order and sampling seed).")
    return "\n".join(parts)


def sweep_table(results_by_file: Sequence[dict], at: float | None = None) -> str:
    """Uniform's learning-rate sweep: one row per learning rate, from the sweep's results files
    (start, gain and mean over the run up to ``at`` rollouts, default each file's end; mean
    [95% t] over seeds)."""
    rows = []
    metrics: tuple[tuple[str, str], ...] = METRICS
    for results in results_by_file:
        runs = [r for r in finished_runs(results) if r["allocator"] == "uniform"]
        if not runs:
            continue
        metrics = metrics_of(results)
        equal_at = float(at) if at else float(min(r["evals"][-1]["rollouts"] for r in runs))
        cells = []
        for metric, _ in metrics:
            start = float(np.mean([r["evals"][0][metric] for r in runs]))
            final = t_interval([value_at(*curve(r, metric), equal_at) - start for r in runs])
            auc = t_interval([mean_over(*curve(r, metric), equal_at) for r in runs])
            cells += [f"{start:.3f}", fmt_ci(final, ".3f", True), fmt_ci(auc, ".3f")]
        rows.append((results["config"]["lr"], len(runs), equal_at, cells))
    head = "| lr | seeds | rollouts | " + " | ".join(
        f"{label} start | {label} gain at end | {label} AUC" for _, label in metrics) + " |"
    lines = [head, "|" + "---|" * (3 + 3 * len(metrics))]
    for lr, n, at, cells in sorted(rows, key=lambda r: r[0]):
        lines.append(f"| {lr:g} | {n} | {at:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_table(results: dict) -> str:
    """Each allocator's resolved settings as run (from the first seed's record)."""
    lines = ["| allocator | settings |", "|---|---|"]
    seen: dict[str, dict] = {}
    for r in finished_runs(results):
        seen.setdefault(r["allocator"], {k: v for k, v in r.get("settings", {}).items() if k != "seed"})
    for name in allocator_names(finished_runs(results)):
        text = ", ".join(f"{k}={v}" for k, v in seen[name].items())
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines)


def page_blocks(
    results: dict, sweep: Sequence[dict], gain_share: float = 0.75, scheduled: dict | None = None,
    buffer_sweep: Sequence[dict] = (), ablation: dict | None = None,
) -> dict[str, str]:
    """The generated blocks of docs/benchmarks-small-model.md, by marker name; ``scheduled``, the
    results of the scheduler entries, adds the block that compares them, ``buffer_sweep``
    (uniform+cbs at other buffer sizes) the buffer-size table, which also reads ``scheduled``,
    and ``ablation`` (uniform+cbs with ``ranking=advantage``) the bandit-vs-rule table."""
    at = min(r["evals"][-1]["rollouts"] for r in finished_runs(results))
    blocks = {"report": markdown_report(results, gain_share), "settings": settings_table(results),
              "sweep": sweep_table(sweep, at), "warmup": warmup_table(results)}
    if scheduled is not None:
        blocks["scheduler"] = scheduler_report(results, scheduled, gain_share)
        if buffer_sweep:
            blocks["scheduler_buffer"] = buffer_sweep_table(results, [*buffer_sweep, scheduled])
        if ablation is not None:
            blocks["scheduler_ablation"] = ablation_table(results, scheduled, ablation, gain_share)
    return blocks


def fill_page(page: str, blocks: dict[str, str]) -> str:
    """``page`` with the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` replaced."""
    for name, text in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in page:
            continue
        head, rest = page.split(begin, 1)
        _, tail = rest.split(end, 1)
        page = f"{head}{begin}\n{text.strip()}\n{end}{tail}"
    return page


def warmup_table(results: dict) -> str:
    """The shared starting point: the warm-up, and the RL training prompts' starting pass rates by bucket."""
    warm = results["warmup"]
    table = results.get("train_prompts") or warm["train_prompts"]  # raw results / committed (compact) ones
    rates, buckets = np.array(table["pass_rate"]), np.array(table["bucket"])
    first = finished_runs(results)[0]["evals"][0]
    lines = [
        f"Warm-up: {warm['steps']:,} teacher-forcing steps, {warm['seconds']:.0f} s, {warm['parameters']:,} parameters. "
        f"Greedy accuracy at the start of GRPO: train {first['train']:.3f}, held-out {first['held_out']:.3f}. "
        f"Starting pass rates of the {rates.size:,} RL training prompts ({table['samples']} samples each): "
        f"mean {rates.mean():.3f}, never solved {np.mean(rates == 0):.1%}, always solved {np.mean(rates == 1):.1%}, "
        f"in between {np.mean((rates > 0) & (rates < 1)):.1%}.",
        "",
        "| bucket | RL training prompts | mean starting pass rate | never solved | always solved |",
        "|---|---|---|---|---|",
    ]
    for b in np.unique(buckets):
        r = rates[buckets == b]
        lines.append(f"| `{table['bucket_names'][b]}` | {r.size} | {r.mean():.3f} | {np.mean(r == 0):.0%} | {np.mean(r == 1):.0%} |")
    return "\n".join(lines)


# ── scheduler entries ─────────────────────────────────────────────────────────────────


def base_allocator(entry: str) -> str:
    """The allocator of an entry ``ALLOCATOR+SCHEDULER`` (the entry itself when it has none)."""
    return entry.partition("+")[0]


def _paired(values: dict[int, float], against: dict[int, float]) -> list[float]:
    return [values[s] - against[s] for s in values if s in against]


def _speedups(mine: dict[int, dict], base: dict[int, dict]) -> list[float]:
    return [base[s]["to_target"] / mine[s]["to_target"] if mine[s]["to_target"] > 0 else float("nan")
            for s in mine if s in base]


def scheduler_summary(main: dict, scheduled: dict, metric: str, gain_share: float = 0.75) -> dict[str, Any]:
    """The scheduler entries of ``scheduled`` against uniform and against their own allocator
    without a scheduler (both from ``main``), paired by seed, at the main comparison's equal
    rollouts and target (uniform's gain sets it, as in the main tables)."""
    entries = [r for r in finished_runs(scheduled) if "+" in r["allocator"]]
    combined = {"runs": {**{k: r for k, r in main["runs"].items() if r.get("evals")},
                         **{f"{r['allocator']}/{r['seed']}": r for r in entries}}}
    summary = summarise(combined, metric, gain_share)
    rows: dict[str, Any] = {}
    for name in dict.fromkeys(r["allocator"] for r in entries):
        mine, base = summary["allocators"][name]["per_seed"], summary["allocators"].get(base_allocator(name), {})
        base_values = base.get("per_seed", {}) if base else {}
        uniform = summary["allocators"]["uniform"]["per_seed"]
        row = dict(summary["allocators"][name])
        row["base"] = base_allocator(name)
        row["base_pairs"] = len([s for s in mine if s in base_values])
        for key in ("final", "auc"):
            row[f"{key}_diff_base"] = t_interval(_paired({s: v[key] for s, v in mine.items()},
                                                         {s: v[key] for s, v in base_values.items()}))
            row[f"{key}_diff"] = t_interval(_paired({s: v[key] for s, v in mine.items()},
                                                    {s: v[key] for s, v in uniform.items()}))
        row["speedup_base"] = ratio_interval(_speedups(mine, base_values))
        rows[name] = row
    return {**summary, "entries": rows}


def _cell(stat: tuple[float, float, float, int], fmt: str, against: float, sign: bool = False) -> str:
    return f"{fmt_ci(stat, fmt, sign)} | {excludes(*stat[1:3], against)}"


def scheduler_accuracy_table(summary: dict, label: str) -> str:
    lines = [
        f"| entry | seeds | {label} acc. at {summary['equal_rollouts']:,.0f} rollouts | Δ vs uniform | excludes 0 "
        "| Δ vs same allocator without scheduler | excludes 0 | Δ AUC vs uniform | excludes 0 "
        "| Δ AUC vs same allocator without scheduler | excludes 0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["entries"].items():
        lines.append(
            f"| {name} | {len(row['seeds'])} | {fmt_ci(row['final'], '.3f')} | {_cell(row['final_diff'], '.3f', 0, True)} "
            f"| {_cell(row['final_diff_base'], '.3f', 0, True)} | {_cell(row['auc_diff'], '.3f', 0, True)} "
            f"| {_cell(row['auc_diff_base'], '.3f', 0, True)} |")
    return "\n".join(lines)


def scheduler_target_table(summary: dict) -> str:
    if not summary["has_target"]:
        return "No rollouts-to-target: uniform's gain is not above the evaluation noise (see the main tables)."
    lines = [
        f"Target {summary['target']:.3f} (start + {summary['gain_share']:.0%} of uniform's gain, as in the main tables).",
        "",
        "| entry | seeds reaching the target | rollouts to target | speed-up vs uniform (x) | excludes 1 "
        "| speed-up vs same allocator without scheduler (x) | excludes 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["entries"].items():
        lines.append(f"| {name} | {row['reached']} of {len(row['seeds'])} | {fmt_ci(row['to_target'], ',.0f')} "
                     f"| {_cell(row['speedup'], '.2f', 1.0)} | {_cell(row['speedup_base'], '.2f', 1.0)} |")
    return "\n".join(lines)


def _step_mean(runs: list[dict], field: str, scale: float = 1.0) -> tuple[float, float, float, int]:
    """Mean over seeds of each run's per-step mean of ``field`` (runs without it: n/a)."""
    values = [scale * float(np.mean([s[field] for s in steps_of(r)])) for r in runs
              if steps_of(r) and field in steps_of(r)[0]]
    return t_interval(values)


def scheduler_step_table(scheduled: dict) -> str:
    """Per entry: what the scheduler trained each step, and where the step's wall time went."""
    runs = finished_runs(scheduled)
    lines = [
        "| entry | seeds | trained per step: fresh | reused | reuse share | mean staleness (steps) "
        "| fresh selected share | reused tokens outside the clip range | mean gain x1e3 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = [n for n in allocator_names(runs) if "+" in n]
    for name in names:
        mine = [r for r in runs if r["allocator"] == name]
        lines.append(
            f"| {name} | {len(mine)} | {fmt_ci(_step_mean(mine, 'trained_fresh'), '.0f')} "
            f"| {fmt_ci(_step_mean(mine, 'trained_reused'), '.0f')} "
            f"| {fmt_ci(_step_mean(mine, 'scheduler_reuse_share'), '.3f')} "
            f"| {fmt_ci(_step_mean(mine, 'scheduler_mean_staleness'), '.2f')} "
            f"| {fmt_ci(_step_mean(mine, 'scheduler_selected_share'), '.3f')} "
            f"| {fmt_ci(_step_mean(mine, 'reused_clipped_token_share'), '.3f')} "
            f"| {fmt_ci(_step_mean(mine, 'mean_gain', 1e3), '.3f')} |")
    lines += [
        "",
        "| entry | seeds | wall ms per step | draw | policy update | scheduler (select, feedback, buffer) "
        "| gain forward | step without the scheduler's parts | with / without (x, per run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in allocator_names(runs):
        mine = [r for r in runs if r["allocator"] == name and steps_of(r) and "step_seconds" in steps_of(r)[0]]
        if not mine:
            continue
        has = "scheduler_seconds" in steps_of(mine[0])[0]
        without = [1000 * float(np.mean([s["step_seconds"] - s.get("scheduler_seconds", 0) - s.get("gain_seconds", 0)
                                         for s in steps_of(r)])) for r in mine]
        update = [1000 * float(np.mean([s["update_seconds"] - s.get("scheduler_seconds", 0) - s.get("gain_seconds", 0)
                                        for s in steps_of(r)])) for r in mine]
        lines.append(
            f"| {name} | {len(mine)} | {fmt_ci(_step_mean(mine, 'step_seconds', 1e3), '.0f')} "
            f"| {fmt_ci(_step_mean(mine, 'draw_seconds', 1e3), '.0f')} | {fmt_ci(t_interval(update), '.0f')} "
            f"| {fmt_ci(_step_mean(mine, 'scheduler_seconds', 1e3), '.1f') if has else '—'} "
            f"| {fmt_ci(_step_mean(mine, 'gain_seconds', 1e3), '.1f') if has else '—'} "
            f"| {fmt_ci(t_interval(without), '.0f')} "
            f"| {fmt_ci(ratio_interval([1000 * float(np.mean([st['step_seconds'] for st in steps_of(r)])) / w for r, w in zip(mine, without)]), '.2f') if has else '—'} |")
    return "\n".join(lines)


def scheduler_report(main: dict, scheduled: dict, gain_share: float = 0.75) -> str:
    """The page's scheduler block: accuracy and speed-up of each ALLOCATOR+SCHEDULER entry against
    uniform and against its allocator alone (paired by seed with ``main``'s runs), then what the
    scheduler did per step and the wall time per step."""
    parts = []
    for metric, label in METRICS:
        s = scheduler_summary(main, scheduled, metric, gain_share)
        parts += [f"#### {label.capitalize()} accuracy with the scheduler", "", scheduler_accuracy_table(s, label), "",
                  scheduler_target_table(s), ""]
    parts += ["#### What the scheduler did, and wall time per step", "", scheduler_step_table(scheduled), ""]
    seeds = sorted({r["seed"] for r in finished_runs(scheduled) if "+" in r["allocator"]})
    parts.append(f"Mean [95% t interval] over seeds {', '.join(map(str, seeds))}; every Δ and speed-up is paired by "
                 "seed with the committed runs of the same seed (docs/results/small_model_cpu.json).")
    return "\n".join(parts)


def buffer_sweep_table(main: dict, sweep: Sequence[dict], entry: str = "uniform+cbs") -> str:
    """One row per scheduler buffer size (each results file of ``sweep`` ran one ``entry`` at one
    size): its accuracy differences and train speed-up against uniform (paired by seed with
    ``main``'s runs) and what the buffer held."""
    lines = [
        "| buffer_size | seeds | Δ train acc. vs uniform | Δ held-out acc. vs uniform | Δ train AUC vs uniform "
        "| train speed-up vs uniform (x) | reuse share | mean staleness | rollouts buffered |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for results in sweep:
        runs = [r for r in finished_runs(results) if r["allocator"] == entry]
        if not runs:
            continue
        train = scheduler_summary(main, results, "train")["entries"][entry]
        held = scheduler_summary(main, results, "held_out")["entries"][entry]
        rows.append((runs[0]["scheduler"]["buffer_size"], len(runs), train, held, runs))
    for size, count, train, held, runs in sorted(rows, key=lambda r: r[0]):
        lines.append(
            f"| {size} | {count} | {fmt_ci(train['final_diff'], '.3f', True)} | {fmt_ci(held['final_diff'], '.3f', True)} "
            f"| {fmt_ci(train['auc_diff'], '.3f', True)} | {fmt_ci(train['speedup'], '.2f')} "
            f"| {fmt_ci(_step_mean(runs, 'scheduler_reuse_share'), '.3f')} "
            f"| {fmt_ci(_step_mean(runs, 'scheduler_mean_staleness'), '.2f')} | {fmt_ci(_step_mean(runs, 'buffered'), '.0f')} |")
    return "\n".join(lines)


def ablation_table(main: dict, bandit: dict, ablation: dict, gain_share: float = 0.75,
                   entry: str = "uniform+cbs") -> str:
    """``entry`` ranked by the bandit (``bandit``'s runs) and by the no-learning rule
    (``ablation``'s runs, CBS with ``ranking=advantage``), each against uniform, then the rule
    against the bandit, all paired by seed: whether CBS's gain is the bandit's choice or only
    the reuse of nonzero-advantage rollouts that both share."""
    lines = [
        "| ranking | seeds | Δ train acc. at equal rollouts | Δ held-out acc. | Δ train AUC | Δ held-out AUC "
        "| train speed-up (x) | held-out speed-up (x) | reuse share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = {}
    for label, results in (("bandit", bandit), ("advantage", ablation)):
        runs = [r for r in finished_runs(results) if r["allocator"] == entry]
        if not runs:
            continue
        rankings = {r.get("scheduler", {}).get("ranking", "bandit") for r in runs}
        if rankings != {label}:
            raise ValueError(f"{entry} runs given as the {label} ranking ran with ranking {sorted(rankings)}")
        train = scheduler_summary(main, results, "train", gain_share)["entries"][entry]
        held = scheduler_summary(main, results, "held_out", gain_share)["entries"][entry]
        summaries[label] = (train, held)
        lines.append(
            f"| {label} vs uniform | {len(runs)} | {fmt_ci(train['final_diff'], '.3f', True)} "
            f"| {fmt_ci(held['final_diff'], '.3f', True)} | {fmt_ci(train['auc_diff'], '.3f', True)} "
            f"| {fmt_ci(held['auc_diff'], '.3f', True)} | {fmt_ci(train['speedup'], '.2f')} "
            f"| {fmt_ci(held['speedup'], '.2f')} | {fmt_ci(_step_mean(runs, 'scheduler_reuse_share'), '.3f')} |")
    if len(summaries) == 2:
        (bt, bh), (at, ah) = summaries["bandit"], summaries["advantage"]
        cells = []
        for key in ("final", "auc"):
            for mine, base in ((at, bt), (ah, bh)):
                cells.append((key, fmt_ci(t_interval(_paired({s: v[key] for s, v in mine["per_seed"].items()},
                                                             {s: v[key] for s, v in base["per_seed"].items()})),
                                          ".3f", True)))
        speed = [fmt_ci(ratio_interval(_speedups(mine["per_seed"], base["per_seed"])), ".2f")
                 for mine, base in ((at, bt), (ah, bh))]
        pairs = len([s for s in at["per_seed"] if s in bt["per_seed"]])
        lines.append(f"| advantage vs bandit | {pairs} | {cells[0][1]} | {cells[1][1]} | {cells[2][1]} | {cells[3][1]} "
                     f"| {speed[0]} | {speed[1]} | — |")
    return "\n".join(lines)


# ── plots ─────────────────────────────────────────────────────────────────────────────


def _band(runs: list[dict], metric: str, x: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ys = np.array([[value_at(*curve(r, metric, x), g) for g in grid] for r in runs])
    mean = np.nanmean(ys, 0)
    stat = [t_interval(col) for col in ys.T]
    return mean, np.array([s[1] for s in stat]), np.array([s[2] for s in stat])


def plot(results: dict, prefix: str) -> list[str]:
    """Mean curves with 95% bands, against rollouts and against optimizer steps, per metric;
    and the zero-variance share against rollouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = finished_runs(results)
    names = allocator_names(runs)
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    equal_at = float(min(r["evals"][-1]["rollouts"] for r in runs))
    written = []
    for metric, label in metrics_of(results):
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        for name in names:
            mine = [r for r in runs if r["allocator"] == name]
            grid = np.linspace(0, equal_at, 61)
            mean, low, high = _band(mine, metric, "rollouts", grid)
            axes[0].plot(grid, mean, color=colours[name], label=name, lw=1.5)
            axes[0].fill_between(grid, low, high, color=colours[name], alpha=0.08)
            last = min(r["evals"][-1]["step"] for r in mine)
            grid_s = np.linspace(0, last, 61)
            mean, low, high = _band(mine, metric, "step", grid_s)
            axes[1].plot(grid_s, mean, color=colours[name], label=name, lw=1.5)
            axes[1].fill_between(grid_s, low, high, color=colours[name], alpha=0.08)
        axes[0].set_xlabel("cumulative rollouts drawn")
        axes[1].set_xlabel("optimizer steps")
        for ax in axes:
            ax.set_ylabel(f"{label} greedy accuracy")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"GRPO on arithmetic: {label} accuracy, mean over seeds with 95% t band")
        path = f"{prefix}{metric}_accuracy.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    # Paired difference against uniform, seed by seed, over the run: the comparison the tables make.
    uniform = {r["seed"]: r for r in runs if r["allocator"] == "uniform"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    grid = np.linspace(0, equal_at, 33)
    for ax, (metric, label) in zip(axes, METRICS):
        for name in names:
            if name == "uniform":
                continue
            mine = [r for r in runs if r["allocator"] == name and r["seed"] in uniform]
            diffs = np.array([[value_at(*curve(r, metric), g) - value_at(*curve(uniform[r["seed"]], metric), g)
                               for g in grid] for r in mine])
            stat = [t_interval(col) for col in diffs.T]
            ax.plot(grid, [st[0] for st in stat], color=colours[name], label=name, lw=1.5)
            ax.fill_between(grid, [st[1] for st in stat], [st[2] for st in stat], color=colours[name], alpha=0.12)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("cumulative rollouts drawn")
        ax.set_ylabel(f"{label} accuracy minus uniform's (same seed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Paired difference against uniform, mean over seeds with 95% t band")
    path = f"{prefix}paired_difference.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        mine = [r for r in runs if r["allocator"] == name]
        grid = np.linspace(0, equal_at, 41)
        ys = []
        for r in mine:
            x = np.array([s["rollouts"] for s in steps_of(r)], dtype=float)
            y = np.array([s["zero_variance_share"] for s in steps_of(r)], dtype=float)
            k = min(10, max(1, y.size))
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ys.append(np.interp(grid, x[k - 1:], smooth))
        ax.plot(grid, np.mean(ys, 0), color=colours[name], label=name, lw=1.5)
    ax.set_xlabel("cumulative rollouts drawn")
    ax.set_ylabel("zero-variance share of trained groups (10-step mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = f"{prefix}zero_variance.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
