"""Variable-group advantages vs OpenRLHF's stock computation, on 65,536 samples.

Prints the median wall time of ``compute_advantages_and_returns`` for
- OpenRLHF 0.11.2's ``RemoteExperienceMaker`` on equal groups (the baseline),
- ours on the same equal groups, and
- ours on unequal groups (sizes 2..30, same total),
and the ratios to the baseline, measured in the same run. Target: ratio <= 1.2.
Also times the group statistics alone (reshape vs segment sums) for transparency.

    python benchmarks/advantages_bench.py [--samples 65536] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from openrlhf_cero import cpu

cpu.install()  # OpenRLHF imports vLLM and flash-attn kernels; stand-ins on a machine without CUDA

from openrlhf.trainer.ppo_utils.experience import Experience  # noqa: E402
from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker  # noqa: E402
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController  # noqa: E402

from openrlhf_cero.openrlhf.advantages import VariableGroupExperienceMaker, group_statistics
from openrlhf_cero.openrlhf.rollout_batch import RolloutBatch, group_index
from openrlhf_cero.openrlhf.stock_main import parse_stock_args


def micro_batches(total: int, micro: int, length: int, seed: int) -> list[Experience]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, total, micro):
        mask = torch.rand(micro, length, generator=gen) < 0.9
        batches.append(
            Experience(
                action_mask=mask,
                kl=torch.randn(micro, length, generator=gen) * 0.01 * mask,
                rewards=torch.randint(0, 2, (micro,), generator=gen).float(),
                index=list(range(start, start + micro)),
                info={},
            )
        )
    return batches


def unequal_sizes(total: int, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 4 * n - 1, total // n).tolist()
    while sum(sizes) > total:
        sizes.pop()
    sizes.append(total - sum(sizes))
    if sizes[-1] < 2:
        sizes[-2] += sizes.pop()
    return sizes


def median_seconds(fn, batches, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        work = copy.deepcopy(batches)
        t0 = time.perf_counter()
        fn(work)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=65536)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--micro", type=int, default=64)
    parser.add_argument("--length", type=int, default=16, help="response tokens per sample")
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    torch.set_num_threads(1)

    args = parse_stock_args(
        ["--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", str(opts.n),
         "--reward.remote_url", "r.py"]
    )
    strategy = type("Strategy", (), {"args": args})()
    stock = RemoteExperienceMaker(None, None, None, None, FixedKLController(0.01), strategy, None)
    ours = VariableGroupExperienceMaker(None, None, None, None, FixedKLController(0.01), strategy, None)
    batches = micro_batches(opts.samples, opts.micro, opts.length, seed=0)

    equal = RolloutBatch(range(opts.samples), [opts.n] * (opts.samples // opts.n))
    sizes = unequal_sizes(opts.samples, opts.n, seed=0)
    unequal = RolloutBatch(range(opts.samples), sizes)

    def ours_on(batch):
        groups = group_index(batch, opts.n)

        def run(work):
            ours._groups = groups
            ours.compute_advantages_and_returns(work)

        return run

    base = median_seconds(stock.compute_advantages_and_returns, batches, opts.repeats)
    same = median_seconds(ours_on(equal), batches, opts.repeats)
    varied = median_seconds(ours_on(unequal), batches, opts.repeats)

    rewards = torch.randint(0, 2, (opts.samples,)).float()
    groups = group_index(unequal, opts.n)

    def reshape_stats():
        r = rewards.reshape(-1, opts.n)
        return r.mean(-1), r.std(-1)

    def segment_stats():
        return group_statistics(rewards, groups)

    def best_of(fn, k=50):
        best = float("inf")
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    reshape_t, segment_t = best_of(reshape_stats), best_of(segment_stats)
    print(f"compute_advantages_and_returns on {opts.samples} samples (group_norm, n={opts.n}, "
          f"{opts.length} tokens, micro-batches of {opts.micro}; median of {opts.repeats})")
    print("| computation | seconds | ratio to stock |")
    print("|---|---|---|")
    print(f"| OpenRLHF 0.11.2, equal groups (baseline) | {base:.4f} | 1.00 |")
    print(f"| ours, equal groups | {same:.4f} | {same / base:.2f} |")
    print(f"| ours, unequal groups (sizes 2..{4 * opts.n - 2}) | {varied:.4f} | {varied / base:.2f} |")
    print(f"group statistics alone: reshape {reshape_t * 1e3:.3f} ms, segment sums {segment_t * 1e3:.3f} ms "
          f"(best of 50)")


if __name__ == "__main__":
    main()
