"""PNG plots of a benchmark (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openrlhf_cero.sim.runner import RunRecord
from openrlhf_cero.sim.scenario import Scenario
from openrlhf_cero.sim.summary import kind


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs: list[RunRecord], values: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    curves = np.array([np.interp(grid, r.cum_rollouts, getattr(r, values)) for r in runs])
    return curves.mean(axis=0), curves.std(axis=0)


def _style(name: str) -> dict:
    """Baselines dashed, the oracle dotted black, allocators solid."""
    return {"baseline": {"ls": "--"}, "oracle": {"ls": ":", "color": "black"}}.get(kind(name), {"ls": "-"})


def _label(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(scenario: Scenario, records: dict[str, list[RunRecord]], out_dir: Path, prefix: str) -> list[Path]:
    """Three figures: pass rate vs cumulative rollouts, allocation histograms, zero-variance share.
    Every entry of ``records`` is drawn (baselines dashed, the oracle dotted)."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    end = min(int(r.cum_rollouts[-1]) for runs in records.values() for r in runs)
    grid = np.linspace(0, end, 200)
    paths = []

    fig, axes = plt.subplots(1, 2 if scenario.eval_size else 1, figsize=(11 if scenario.eval_size else 6, 4))
    axes = np.atleast_1d(axes)
    for ax, (values, label) in zip(axes, [("train_pass_rate", "train"), ("eval_pass_rate", "held-out")]):
        for name, runs in records.items():
            mean, sd = _mean_curve(runs, values, grid)
            (line,) = ax.plot(grid, mean, label=name, **_style(name))
            ax.fill_between(grid, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        if (label == "train") == (scenario.metric == "train"):
            ax.axhline(scenario.target, color="grey", ls="--", lw=0.8, label=f"target {scenario.target:g}")
        _label(ax, "cumulative rollouts drawn", f"mean {label} pass rate")
    fig.suptitle(f"{scenario.name}: pass rate vs rollouts (mean ± SD over seeds)")
    paths.append(_save(plt, fig, out_dir / f"{prefix}_pass_rate.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(records), 1)
    for j, (name, runs) in enumerate(records.items()):
        counts = np.sum([r.size_counts for r in runs], axis=0).astype(np.float64)
        share = counts / max(counts.sum(), 1.0)
        sizes = np.arange(share.size)
        style = {"baseline": {"hatch": "//"}, "oracle": {"color": "black"}}.get(kind(name), {})
        ax.bar(sizes + (j - (len(records) - 1) / 2) * width, share, width=width, label=name, **style)
    _label(ax, "rollouts in a trained group", "share of trained groups", f"{scenario.name}: allocation histogram")
    paths.append(_save(plt, fig, out_dir / f"{prefix}_allocation.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in records.items():
        curves = []
        for r in runs:
            zv = r.zero_variance_share
            window = max(1, int(round(scenario.steps_per_epoch)))
            smooth = np.convolve(np.nan_to_num(zv), np.ones(window) / window, mode="valid")
            curves.append(np.interp(grid, r.cum_rollouts[window:], smooth))
        ax.plot(grid, np.mean(curves, axis=0), label=name, **_style(name))
    _label(ax, "cumulative rollouts drawn", "zero-variance share of trained groups",
           f"{scenario.name}: zero-variance groups (one-epoch moving mean)")
    paths.append(_save(plt, fig, out_dir / f"{prefix}_zero_variance.png"))
    return paths
