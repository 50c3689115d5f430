"""The settings of a run and the named presets.

``Config()``'s defaults are the GPU size (one H100/H200); :data:`CPU` is the setting measured
on 2 CPU cores (docs/benchmarks-small-model.md), :data:`SMOKE` a tiny end-to-end check.
Every run of one results file shares one Config: the same task, warm-up checkpoint and
budget, so allocators differ only in how they spend rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The entries a full comparison runs: uniform, the simulator's baselines, our allocators.
ALL_ALLOCATORS = ("uniform", "dynamic_filtering", "oversample_even", "beta_greedy", "cero", "vip", "pilot_commit")


@dataclass
class Config:
    width: int = 256
    layers: int = 4
    heads: int = 8
    buckets: str = ""  # the task: comma-separated bucket names (task.BUCKET_NAMES); "" = all 22
    # The buckets GRPO trains and evaluates on (a subset of the task's); "" = all of them; "auto" =
    # those whose mean starting pass rate after warm-up is in runs.AUTO_BAND.
    rl_buckets: str = ""
    rl_train_size: int = 0  # GRPO trains on the first this many training prompts of those buckets; 0 = all
    data_seed: int = 0
    train_size: int = 3000
    eval_size: int = 2000
    warmup_lr: float = 1e-3
    warmup_batch: int = 256
    warmup_target: float = 0.4  # mean sampled pass rate on the probe at which warm-up stops
    warmup_max_steps: int = 20000
    warmup_check_every: int = 100
    warmup_max_seconds: float = 150.0
    warmup_pass_samples: int = 16  # samples per training prompt for the recorded starting pass rates
    probe_size: int = 512
    batch_prompts: int = 64
    n: int = 8
    min_samples: int = 2
    max_samples: int = 32
    lr: float = 1e-4
    grad_clip: float = 1.0
    total_rollouts: int = 204800
    eval_every: int = 5120
    eval_samples: int = 0  # > 0: evaluations also record the sampled accuracy over this many samples per prompt
    deadline: float = 0.0  # wall-clock time (time.time()) at which runs stop and keep what they have
    allocator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Options of the schedulers that entries ``ALLOCATOR+SCHEDULER`` use, by scheduler name
    # (e.g. {"cbs": {"buffer_size": 256}}); the scheduler's defaults otherwise.
    scheduler_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cuda"


# Keys that may differ between results files that are merged (they do not change what is run).
NOT_SETTINGS = ("deadline",)

SMOKE: dict[str, Any] = dict(
    width=32, layers=1, heads=2, train_size=160, eval_size=80, warmup_batch=64, warmup_target=0.15,
    warmup_max_steps=300, warmup_check_every=50, probe_size=64, batch_prompts=4, n=8, max_samples=16,
    total_rollouts=96, eval_every=32, device="cpu",
)

# The measured CPU setting (docs/benchmarks-small-model.md explains each choice). The warm-up
# learns 14 buckets; GRPO trains on the 9 that the warm-up left in between (neither ~0 nor ~1),
# on 1,500 training prompts, and is evaluated on all held-out prompts of those buckets.
CPU_TASK = "+13,+14,+22,+23,+24,+31,+32,+33,+41,+42,*12,*21,*31,*13"
CPU_RL_BUCKETS = "+13,+14,+24,+32,+33,*12,*21,*31,*13"
CPU: dict[str, Any] = dict(
    width=64, layers=2, heads=4, buckets=CPU_TASK, rl_buckets=CPU_RL_BUCKETS, train_size=6000, eval_size=2000,
    rl_train_size=1500, warmup_batch=128, warmup_lr=3e-3, warmup_target=0.35, warmup_check_every=200,
    warmup_max_seconds=900, probe_size=256, batch_prompts=32, n=8, lr=2.5e-4, total_rollouts=40960,
    eval_every=2560, device="cpu",
)
