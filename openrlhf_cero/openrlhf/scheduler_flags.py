"""``--rollout_scheduler`` and its options on OpenRLHF's parser, and their launch checks.

Mirrors the allocator flags (flags.py): ``--rollout.scheduler`` (alias
``--rollout_scheduler``) -> ``args.rollout.scheduler``, ``--scheduler.seed``, and each
scheduler's own options (its ``OptionSpec``s) as ``--scheduler.<name>.<option>``.

What the trainer integration supports is checked here, before anything starts, and each
refusal names the flag to change (docs/cbs.md, "In the trainer", says why).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any, Sequence

from openrlhf_cero.openrlhf.flags import _parse_bool
from openrlhf_cero.schedulers import RolloutScheduler, SchedulerError, available_schedulers, scheduler_class
from openrlhf_cero.schedulers.registry import NO_SCHEDULER

# Advantages the scheduler can carry over steps: a rollout's own return minus a baseline
# of its drawn group, no critic (advantages.RETURN_ESTIMATORS; GAE's values would be stale).
_SUPPORTED_ESTIMATORS = ("reinforce", "rloo", "reinforce_baseline", "group_norm", "dr_grpo", "flash_reinforce")


def _option_classes() -> dict[str, type[RolloutScheduler]]:
    """Every scheduler whose module imports (a missing optional dependency hides only its flags)."""
    found = {}
    for name in available_schedulers():
        try:
            found[name] = scheduler_class(name)
        except ModuleNotFoundError:
            continue
    return found


def add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rollout scheduling (openrlhf-cero)")
    group.add_argument(
        "--rollout.scheduler",
        "--rollout_scheduler",
        dest="rollout.scheduler",
        default=NO_SCHEDULER,
        metavar="NAME",
        help=f"which rollouts each step trains on: {NO_SCHEDULER} (the step's fresh rollouts, OpenRLHF's behaviour) "
        f"or {', '.join(available_schedulers())} (fresh and buffered rollouts, chosen per step; docs/cbs.md)",
    )
    group.add_argument(
        "--scheduler.seed", type=int, default=None, help="scheduler random seed (default: --train.seed)"
    )
    for name, cls in _option_classes().items():
        for option in cls.options:
            kwargs: dict[str, Any] = dict(default=option.default, help=f"[{name}] {option.help}")
            if option.type is bool:
                kwargs.update(type=_parse_bool, metavar="{true,false}")
            else:
                kwargs["type"] = option.type
            if option.choices:
                kwargs["choices"] = option.choices
            group.add_argument(f"--scheduler.{name}.{option.name}", **kwargs)


def scheduler_name(args: SimpleNamespace) -> str:
    return getattr(getattr(args, "rollout", SimpleNamespace()), "scheduler", NO_SCHEDULER) or NO_SCHEDULER


def scheduler_settings(args: SimpleNamespace) -> tuple[str, dict[str, Any]]:
    """Name and constructor keywords of the scheduler the (hierarchized) args ask for."""
    name = scheduler_name(args)
    cls = scheduler_class(name)  # unknown names fail here, listing the valid ones
    common = getattr(args, "scheduler", SimpleNamespace())
    seed = getattr(common, "seed", None)
    settings: dict[str, Any] = {"seed": args.train.seed if seed is None else seed}
    own = getattr(common, name, SimpleNamespace())
    for option in cls.options:
        settings[option.name] = getattr(own, option.name, option.default)
    return name, settings


def scheduler_from_args(args: SimpleNamespace) -> RolloutScheduler:
    name, settings = scheduler_settings(args)
    return scheduler_class(name)(**settings)


def check_scheduler_options_given(argv: Sequence[str], name: str) -> None:
    """Refuse options of a scheduler that is not selected: they would do nothing."""
    for token in argv:
        parts = token.split("=", 1)[0].split(".")
        if parts[0] != "--scheduler" or len(parts) < 2:
            continue
        flag = ".".join(parts)
        if name == NO_SCHEDULER:
            raise SchedulerError(
                f"{flag} is a scheduler flag, but --rollout_scheduler is {NO_SCHEDULER}; select a scheduler "
                f"(--rollout_scheduler {' | '.join(available_schedulers())}) or drop the flag"
            )
        if len(parts) == 3 and parts[1] != name:
            raise SchedulerError(
                f"{flag} is an option of --rollout_scheduler {parts[1]}, but this run uses "
                f"--rollout_scheduler {name}; drop the option or select {parts[1]}"
            )


def check_scheduler_launch(args: SimpleNamespace) -> RolloutScheduler | None:
    """Refuse, before anything starts, settings the scheduler cannot train correctly under.

    Returns the scheduler built once from the args (None with ``--rollout_scheduler none``)."""
    name = scheduler_name(args)
    if name == NO_SCHEDULER:
        return None
    cls = scheduler_class(name)
    _, settings = scheduler_settings(args)
    for option, low, meaning in (("buffer_size", 1, "rollouts the buffer holds"), ("max_staleness", 1, "steps")):
        if any(o.name == option for o in cls.options) and not settings[option] >= low:
            raise SchedulerError(
                f"--scheduler.{name}.{option}={settings[option]} must be >= {low} ({meaning}); "
                "use --rollout_scheduler none to train on fresh rollouts only"
            )
    remote_rewards = bool(getattr(args.reward, "remote_url", None)) or bool(
        getattr(args.train, "agent_func_path", None)
    )
    if not remote_rewards:
        raise SchedulerError(
            f"--rollout_scheduler {name} needs each rollout's reward when it is generated, but rewards here come from "
            "a reward model; pass --reward.remote_url (a reward_func .py file or an HTTP reward server) or "
            "--train.agent_func_path, or use --rollout_scheduler none"
        )
    estimator = args.algo.advantage.estimator
    if estimator not in _SUPPORTED_ESTIMATORS:
        raise SchedulerError(
            f"--rollout_scheduler {name} reuses rollouts with the advantage of the step that drew them, which is "
            f"only right without a critic; --algo.advantage.estimator {estimator} is not supported: use one of "
            f"{', '.join(_SUPPORTED_ESTIMATORS)}, or --rollout_scheduler none"
        )
    if getattr(args.algo.kl, "target", None) and not args.algo.kl.use_loss:
        raise SchedulerError(
            f"--rollout_scheduler {name} with --algo.kl.target (adaptive KL) and the KL in the reward: a reused "
            "rollout's advantage carries the KL coefficient of the step that drew it; use --algo.kl.use_loss, or "
            "a fixed coefficient (no --algo.kl.target)"
        )
    try:
        return scheduler_class(name)(**settings)
    except SchedulerError as error:
        raise SchedulerError(f"--rollout_scheduler {name}: {error}") from None
