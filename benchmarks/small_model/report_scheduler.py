"""The small-model tables of the rollout-scheduler entries (``ALLOCATOR+SCHEDULER``, docs/cbs.md).

Each scheduler entry is paired by seed twice: against uniform and against its own allocator
without a scheduler, both from the main results, at the main comparison's equal rollouts and
target. The buffer-size table and the bandit-against-rule ablation use the same pairing.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from benchmarks.small_model.report import (
    METRICS, allocator_names, excludes, finished_runs, fmt_ci, ratio_interval, steps_of, summarise, t_interval,
)


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
