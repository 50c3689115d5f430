"""CERO's building blocks: the prompt table against a dict, water-filling and rounding
against brute force, and the regret curve (loosely; the benchmark prints the full one)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from openrlhf_cero.allocators.prompt_table import PromptTable
from openrlhf_cero.allocators.waterfill import round_to_total, solve_clipped_linear, solve_log_dual


def test_prompt_table_matches_a_dict_through_growth_duplicates_and_reload():
    rng = np.random.default_rng(0)
    table = PromptTable({"count": (np.uint32, 0), "score": (np.float32, 0.5)})
    reference: dict[int, int] = {}
    universe = np.concatenate([rng.integers(0, 2**64 - 1, 30_000, dtype=np.uint64), np.arange(3000, dtype=np.uint64)])
    for _ in range(60):
        batch = universe[rng.integers(0, universe.size, 1024)]  # repeats within and across batches
        rows = table.lookup_or_insert(batch)
        np.add.at(table.columns["count"], rows, 1)
        for key in batch.tolist():
            reference[key] = reference.get(key, 0) + 1
    keys = np.array(list(reference), dtype=np.uint64)
    assert len(table) == len(reference)
    np.testing.assert_array_equal(table.columns["count"][table.lookup(keys)], list(reference.values()))
    unseen = np.setdiff1d(universe, keys)
    assert (table.lookup(unseen) == -1).all()
    assert (table.columns["score"][table.lookup(keys)] == 0.5).all()
    copy = PromptTable({"count": (np.uint32, 0), "score": (np.float32, 0.5)})
    copy.load_state(json.loads(json.dumps(table.state())))
    np.testing.assert_array_equal(copy.columns["count"][copy.lookup(keys)], list(reference.values()))
    assert (copy.lookup(unseen) == -1).all()
    assert table.nbytes / len(table) <= 64


def test_prompt_table_stays_under_64_bytes_per_prompt_at_any_size():
    table = PromptTable({f"c{i}": (np.float32, 0.0) for i in range(5)})  # CERO's 20 bytes of columns
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(200):
        table.lookup_or_insert(rng.integers(0, 2**64 - 1, 1500, dtype=np.uint64))
        worst = max(worst, table.nbytes / len(table))
    assert worst <= 64


def test_solve_log_dual_hits_the_total_of_a_clipped_linear_allocation():
    rng = np.random.default_rng(2)
    for _ in range(200):
        theta = rng.normal(0, 2, 50)
        scale = rng.uniform(1, 30)
        total = rng.uniform(2 * 50, 40 * 50)

        def alloc(t):
            return scale * np.maximum(theta - t, 0)

        t = solve_log_dual(alloc, 2, 40, total, ((theta - 40 / scale).min(), (theta - 2 / scale).max()))
        assert np.clip(alloc(t), 2, 40).sum() == pytest.approx(total, abs=1e-6)


def test_exact_hyperbolic_solve_agrees_with_brentq():
    from openrlhf_cero.allocators import create_allocator
    from openrlhf_cero.allocators.cero import _Batch

    rng = np.random.default_rng(5)
    alloc = create_allocator("cero", n_samples_per_prompt=8, utility="hyperbolic", saturation_scale=3.0)
    for _ in range(200):
        size = int(rng.integers(1, 60))
        batch = _Batch(alloc, rng.normal(-3, 2, size), rng.integers(0, 300, size).astype(float))
        total = rng.uniform(alloc.min_samples * size, alloc.max_samples * size)
        exact = batch.solve(total)
        root = solve_log_dual(batch.raw, batch.low, batch.high, total, batch.bracket)
        assert batch.total(exact) == pytest.approx(total, abs=1e-6)
        np.testing.assert_allclose(batch.clipped(exact), batch.clipped(root), atol=1e-5)


def test_exact_linear_solve_agrees_with_brentq():
    rng = np.random.default_rng(4)
    for _ in range(300):
        size = int(rng.integers(1, 80))
        theta = rng.normal(0, 2, size)
        scale = rng.uniform(0.5, 40)
        high = rng.integers(2, 40, size) if rng.random() < 0.5 else 40
        total = rng.uniform(2 * size, np.broadcast_to(high, size).sum())

        def alloc(t):
            return scale * (theta - t)

        exact = -solve_clipped_linear(np.full(size, scale), -scale * theta, 2, high, total)
        assert np.clip(alloc(exact), 2, high).sum() == pytest.approx(total, abs=1e-6)
        bracket = ((theta - np.asarray(high) / scale).min(), (theta - 2 / scale).max())
        root = solve_log_dual(alloc, 2, high, total, bracket)
        np.testing.assert_allclose(np.clip(alloc(exact), 2, high), np.clip(alloc(root), 2, high), atol=1e-6)


def test_round_to_total_is_exact_bounded_and_closest_to_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(300):
        size, low, high = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(4, 9))
        total = int(rng.integers(low * size, high * size + 1))
        x = rng.dirichlet(np.ones(size)) * total
        # Project the continuous point onto the box with the same total, as the solver does.
        lo, hi = -1e3, 1e3
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.clip(x + mid, low, high).sum() < total else (lo, mid)
        x = np.clip(x + hi, low, high)
        counts = round_to_total(x, total, low, high)
        assert counts.sum() == total and counts.min() >= low and counts.max() <= high
        best = min(
            (np.abs(np.array(c) - x).sum() for c in itertools.product(range(low, high + 1), repeat=size)
             if sum(c) == total),
        )
        assert np.abs(counts - x).sum() <= best + 1e-9


def _regret_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cero_regret.py"
    spec = importlib.util.spec_from_file_location("cero_regret", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regret_grows_sublinearly_with_steps():
    bench = _regret_module()
    ks = [16, 32, 64, 128, 256]
    pool_of = bench.SCENARIOS["pool grows with K (4 epochs)"]
    regret = bench.regret_curve(ks, pool_of, seeds=1)
    assert (regret > -1e-6).all()  # the offline optimum is an upper bound
    per_step = regret / np.array(ks)
    assert (np.diff(per_step) < 0).all()
    assert bench.fitted_exponent(ks, regret) <= 0.6
