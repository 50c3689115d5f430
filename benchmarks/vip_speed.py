"""VIP's per-step cost: GP fit + predict + allocate for one batch, against the history window.

    OPENBLAS_NUM_THREADS=1 python benchmarks/vip_speed.py [--batch 1024] [--windows 1024,4096,8192,16384]
        [--dims 128,256] [--repeats 15] [--cpu-time]

Each configuration first fills the window with past steps (random unit features, binomial
outcomes), then times full plan + finish cycles through the allocator (features given with
``observe_prompts(features=...)``, so text featurisation is excluded and timed separately)
and each part alone: predict (batch x window kernel), allocate (KKT + rounding), fit
(batch x batch Cholesky). The baseline in the same run is the uniform allocator's cycle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from openrlhf_cero.allocators import create_allocator
from openrlhf_cero.allocators.text_features import NgramHashFeaturizer
from openrlhf_cero.allocators.variance_allocation import integer_allocation
from openrlhf_cero.allocators.vip_gp import sigmoid


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cycle(alloc, ids, features, outcomes, budget):
    """observe + plan + finish: the allocator's whole work for one batch. ``outcomes`` are
    drawn beforehand (rows of 0/1 per prompt) so that the timing holds no caller work."""
    if features is not None:
        alloc.observe_prompts(ids, features=features)
    counts = alloc.plan(ids, budget)
    alloc.finish(ids, [row[:c] for row, c in zip(outcomes, counts.tolist())])


CLOCK = time.perf_counter  # --cpu-time switches to time.process_time


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append((CLOCK() - t0) * 1e3)
    return statistics.median(times)


def measure(batch: int, window: int, dim: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    alloc = create_allocator("vip", n_samples_per_prompt=8, seed=0, history_window=window, feature_dim=dim)
    budget = batch * 8
    next_id = 0

    def fresh_batch():
        nonlocal next_id
        ids = np.arange(next_id, next_id + batch, dtype=np.uint64)
        next_id += batch
        return ids, _unit(rng, batch, dim), (rng.random((batch, 32)) < 0.4).astype(np.float64)

    while alloc.gp.win_alpha.size < window:  # fill the window
        _cycle(alloc, *fresh_batch(), budget)

    prepared = [fresh_batch() for _ in range(repeats)]
    full = _median_ms(lambda: _cycle(alloc, *prepared.pop(), budget), repeats)

    ids, feats, _ = fresh_batch()
    alloc.observe_prompts(ids, features=feats)
    features = alloc._feature_matrix(ids)
    predict = _median_ms(lambda: alloc.gp.predict(ids, features), repeats)
    prediction = alloc.gp.predict(ids, features)
    p = np.clip(sigmoid(prediction.logits), 1e-6, 1 - 1e-6)
    allocate = _median_ms(lambda: integer_allocation(alloc.variance, p * (1 - p), budget, 2, 32), repeats)
    trials = np.full(batch, 8)
    successes = rng.binomial(8, 0.4, batch).astype(float)

    def fit():
        gp = alloc.gp
        saved = (gp.win_features, gp.win_alpha, gp.win_update, dict(gp.anchors), gp.updates)
        gp.update(ids, features, prediction, successes, trials)
        gp.win_features, gp.win_alpha, gp.win_update, gp.anchors, gp.updates = saved

    fit_ms = _median_ms(fit, repeats)

    uniform = create_allocator("uniform", n_samples_per_prompt=8, seed=0)
    prepared = [fresh_batch() for _ in range(repeats)]

    def uniform_cycle():
        ids, _, outcomes = prepared.pop()
        _cycle(uniform, ids, None, outcomes, budget)

    baseline = _median_ms(uniform_cycle, repeats)
    return {"cycle": full, "predict": predict, "allocate": allocate, "fit": fit_ms, "uniform": baseline}


def featurise_ms(batch: int, dim: int) -> float:
    rng = np.random.default_rng(1)
    words = ["triangle", "prime", "integer", "sum", "probability", "find", "the", "of", "x", "=", "\\frac{1}{2}"]
    texts = [" ".join(rng.choice(words, 80)) + f" {i}" for i in range(batch)]  # ~80 words, ~500 chars
    featurizer = NgramHashFeaturizer(dim)
    t0 = CLOCK()
    featurizer(texts)
    return (CLOCK() - t0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--windows", default="1024,2048,4096,8192,16384")
    parser.add_argument("--dims", default="128,256", help="feature dimensions to try (128 = default, 384 = MiniLM)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time instead of wall time (a loaded machine inflates wall "
                        "time; with OPENBLAS_NUM_THREADS=1, CPU time is close to an idle core's wall time)")
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(f"batch {args.batch} prompts, budget {args.batch * 8} rollouts, median of {args.repeats} runs (ms, "
          f"{'process CPU time' if args.cpu_time else 'wall time'}); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, OPENBLAS_NUM_THREADS={threads}")
    print(f"{'dim':>5} {'window':>7} {'plan+finish':>12} {'predict':>8} {'allocate':>9} {'fit':>6} "
          f"{'uniform':>8} {'x uniform':>10}")
    for dim in (int(d) for d in args.dims.split(",")):
        for window in (int(w) for w in args.windows.split(",")):
            r = measure(args.batch, window, dim, args.repeats)
            print(f"{dim:>5} {window:>7} {r['cycle']:>12.1f} {r['predict']:>8.1f} {r['allocate']:>9.1f} "
                  f"{r['fit']:>6.1f} {r['uniform']:>8.2f} {r['cycle'] / r['uniform']:>10.0f}")
        print(f"ngram_hash featurisation of {args.batch} new ~500-character prompts, dim {dim}: "
              f"{featurise_ms(args.batch, dim):.0f} ms (once per prompt: cached by id)")


if __name__ == "__main__":
    main()
