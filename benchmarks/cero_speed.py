"""CERO plan + finish time per 1,024-prompt batch and state size, against the number of
prompts already tracked (10k vs 1M): the per-step cost must not grow with the table.

    python benchmarks/cero_speed.py [--tracked 10000 1000000] [--steps 300]

Prints the median and 90th percentile of plan + finish (wall clock, and this thread's
CPU time, which other jobs on a shared machine do not inflate) (through the public contract,
so base.py's validation of rewards is included), the uniform allocator on the same
batches as the baseline, the bytes per tracked prompt and the JSON checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from openrlhf_cero.allocators import create_allocator

BATCH = 1024
N = 8


def populated(tracked: int, rng: np.random.Generator):
    alloc = create_allocator("cero", n_samples_per_prompt=N, seed=0)
    ids = rng.integers(0, 2**63, size=tracked, dtype=np.uint64)
    rows = alloc.table.lookup_or_insert(ids)
    cols = alloc.table.columns
    cols["alpha"][rows] = 1 + rng.integers(0, 40, tracked)
    cols["beta"][rows] = 1 + rng.integers(0, 40, tracked)
    cols["cumulative"][rows] = rng.integers(0, 200, tracked)
    cols["log_dual"][rows] = rng.normal(-3, 1, tracked)
    return alloc, ids


def time_steps(alloc, ids, steps: int, rng: np.random.Generator) -> np.ndarray:
    times = []
    for _ in range(steps):
        # Three quarters revisits, one quarter prompts never seen before.
        known = ids[rng.integers(0, ids.size, BATCH * 3 // 4)]
        fresh = rng.integers(0, 2**63, BATCH - known.size, dtype=np.uint64)
        batch = np.concatenate([known, fresh])
        rewards_pool = (rng.random(BATCH * 64) < 0.4).astype(np.float64)
        start, cpu = time.perf_counter(), time.thread_time()
        counts = alloc.plan(batch, BATCH * N)
        planned, planned_cpu = time.perf_counter() - start, time.thread_time() - cpu
        # Building the caller's reward lists is the caller's work: not timed.
        offsets = np.concatenate([[0], np.cumsum(counts)])
        rewards = [rewards_pool[offsets[i] : offsets[i + 1]] for i in range(BATCH)]
        start, cpu = time.perf_counter(), time.thread_time()
        alloc.finish(batch, rewards)
        times.append((planned + time.perf_counter() - start, planned_cpu + time.thread_time() - cpu))
    return np.array(times) * 1e3  # columns: wall, CPU time of this thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracked", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    uniform = create_allocator("uniform", n_samples_per_prompt=N, seed=0)
    base_ms = time_steps(uniform, rng.integers(0, 2**63, 10_000, dtype=np.uint64), args.steps, rng)
    print(
        f"uniform plan+finish per {BATCH}-prompt batch: median {np.median(base_ms[:, 0]):.3f} ms wall, "
        f"{np.median(base_ms[:, 1]):.3f} ms CPU"
    )
    for tracked in args.tracked:
        alloc, ids = populated(tracked, rng)
        ms = time_steps(alloc, ids, args.steps, rng)
        per_prompt = alloc.table.nbytes / len(alloc.table)
        state = json.dumps(alloc.state_dict())
        print(
            f"tracked {tracked:>9,} -> {len(alloc.table):>9,}: plan+finish median {np.median(ms[:, 0]):.3f} ms wall "
            f"(p90 {np.percentile(ms[:, 0], 90):.3f}), {np.median(ms[:, 1]):.3f} ms CPU "
            f"({np.median(ms[:, 0]) / np.median(base_ms[:, 0]):.2f}x uniform wall); "
            f"memory {per_prompt:.1f} B/prompt ({alloc.table.nbytes / 2**20:.1f} MiB); "
            f"JSON checkpoint {len(state) / 2**20:.1f} MiB ({len(state) / len(alloc.table):.1f} B/prompt)"
        )


if __name__ == "__main__":
    main()
