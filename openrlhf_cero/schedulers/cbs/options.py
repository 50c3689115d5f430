"""The ``cbs`` scheduler's options: flags ``--scheduler.cbs.<name>``, constructor keywords.

The trainer turns each ``OptionSpec`` into a flag (openrlhf/scheduler_flags.py) and passes
its value as the keyword of the same name; ``check_option`` refuses a bad value with the
flag named, whoever constructs the scheduler (trainer, simulator, a test).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from openrlhf_cero.allocators.base import OptionSpec
from openrlhf_cero.schedulers.base import SchedulerError

FLAG = "--scheduler.cbs."
# How buffered and fresh rollouts are ranked once the warm-up is over: "bandit" scores them with
# the neural UCB learned from feedback; "advantage" is the no-learning ablation, which ranks by
# the warm-up's rule (noise-weighted |advantage| / (1 + age)) and never consults the scorer, so
# that a gain of the bandit can be told apart from a gain of reusing nonzero-advantage rollouts.
RANKINGS = ("bandit", "advantage")

OPTIONS = (
    OptionSpec("buffer_size", int, 1024, "most past rollouts kept for reuse (>= 1)"),
    OptionSpec("max_staleness", int, 4, "a kept rollout trains at most this many steps after it was drawn (>= 1)"),
    OptionSpec("max_reuse_share", float, 0.25, "most of a step's batch that buffered rollouts may fill, in [0, 1]"),
    OptionSpec("exploration", float, 1.0, "UCB width multiplier beta on the scorer's last layer (>= 0)"),
    OptionSpec("hidden", int, 32, "width of the scorer MLP's two hidden layers, in [2, 1024]"),
    OptionSpec("lr", float, 1e-3, "Adam learning rate of the scorer (> 0)"),
    OptionSpec("train_steps", int, 8, "Adam steps on the scorer's replay after each feedback (>= 0)"),
    OptionSpec("scorer_batch", int, 256, "minibatch of each scorer Adam step (>= 1)"),
    OptionSpec("replay_size", int, 4096, "most (context, gain) pairs the scorer learns from (>= 1)"),
    OptionSpec("ridge", float, 1.0, "ridge lambda of the UCB head (> 0)"),
    OptionSpec("noise_z", float, 1.0, "baseline-noise multiple an advantage must exceed to count fully (>= 0)"),
    OptionSpec("sign_balance", bool, True, "a group trains both advantage signs when it has both"),
    OptionSpec("warmup_steps", int, 2, "steps that train exactly the fresh rollouts before the scorer decides (>= 0)"),
    OptionSpec("prompt_table_size", int, 65536, "most prompts whose Beta posterior the scheduler tracks (>= 1)"),
    OptionSpec("ranking", str, "bandit", "score of a rollout after the warm-up: bandit (the neural UCB) or advantage "
               "(the no-learning ablation: noise-weighted |advantage| / (1 + age), the scorer never consulted; "
               "same buffer, caps and sign balance)", choices=RANKINGS),
)


def check_option(name: str, value: Any, kind: type, ok: Callable[[Any], bool], rule: str) -> Any:
    """``value`` converted to ``kind`` and checked, or an error naming the flag."""
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise SchedulerError(f"{FLAG}{name}={value!r} must be a {kind.__name__}, {rule}") from None
    if kind is int and converted != value:
        raise SchedulerError(f"{FLAG}{name}={value!r} must be a whole number, {rule}")
    if (kind is float and not math.isfinite(converted)) or not ok(converted):
        raise SchedulerError(f"{FLAG}{name}={value!r} must be {rule}")
    return converted
