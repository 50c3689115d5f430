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
