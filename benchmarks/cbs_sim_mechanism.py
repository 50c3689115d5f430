"""Where a scheduler's speed-up comes from in the simulator: how much gradient a step applies.

Why: under the presets' ``sgd`` update a logit moves by lr times its gradient, so a step
whose batch holds more rollouts with a non-zero advantage (fresh zero-advantage rollouts
left out, their places filled by buffered rollouts with one) moves the policy further per
drawn rollout, whichever rollouts they are. This script measures, per step, the L1 norm of
the applied per-group gradients (before any ``adam`` normalisation; L1 and L2), the number
of prompts they reach and the share of the trained batch with a non-zero advantage, for an entry with and without the scheduler, on
the same seed. It wraps ``PromptWorld.apply_gradients`` and ``clipped_gradient`` to read
them; the runs are otherwise unchanged.

    python benchmarks/cbs_sim_mechanism.py --scenario deepscaler --overrides '{"epochs": 20}' --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np

from openrlhf_cero.sim import scheduled
from openrlhf_cero.sim.runner import run_allocator
from openrlhf_cero.sim.scenario import load_overrides, make_scenario
from openrlhf_cero.sim.world import PromptWorld


def measure(scenario_name: str, overrides: dict[str, Any], seed: int, scheduler: str | None) -> dict[str, float]:
    l1: list[float] = []
    l2: list[float] = []
    prompts: list[float] = []
    nonzero: list[float] = []
    original_apply = PromptWorld.apply_gradients
    original_clipped = scheduled.clipped_gradient

    def apply(self, index, gradient):  # records, then applies unchanged
        l1.append(float(np.abs(gradient).sum()))
        l2.append(float(np.sqrt(np.square(gradient).sum())))
        prompts.append(float(np.unique(np.asarray(index)[np.abs(gradient) > 0]).size))
        return original_apply(self, index, gradient)

    def clipped(theta_now, theta_drew, reward, advantage, solvable, clip_eps=0.2):
        nonzero.append(float(np.mean(np.abs(advantage) > 1e-12)) if len(advantage) else 0.0)
        return original_clipped(theta_now, theta_drew, reward, advantage, solvable, clip_eps)

    PromptWorld.apply_gradients = apply
    scheduled.clipped_gradient = clipped
    try:
        record = run_allocator(make_scenario(scenario_name, overrides), "uniform", seed, scheduler=scheduler)
    finally:
        PromptWorld.apply_gradients = original_apply
        scheduled.clipped_gradient = original_clipped
    out = {"gradient_l1_per_step": float(np.mean(l1)) if l1 else float("nan"),
           "gradient_l2_per_step": float(np.mean(l2)) if l2 else float("nan"),
           "prompts_with_gradient_per_step": float(np.mean(prompts)) if prompts else float("nan"),
           "final_train_pass_rate": float(record.train_pass_rate[-1])}
    if nonzero:
        out["nonzero_advantage_share_of_batch"] = float(np.mean(nonzero))
    else:  # the group rule: every drawn rollout trains; its non-zero share is the mixed groups' rollouts
        out["nonzero_advantage_share_of_batch"] = float(record.rollouts_mixed.sum() / record.rollouts_trained.sum())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="deepscaler")
    p.add_argument("--overrides")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    overrides = load_overrides(args.overrides)
    result = {name: measure(args.scenario, overrides, args.seed, sched) for name, sched in
              (("uniform", None), ("uniform+cbs", "cbs"))}
    print(json.dumps({"command": " ".join(sys.argv), "scenario": args.scenario, "overrides": overrides,
                      "seed": args.seed, "entries": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
