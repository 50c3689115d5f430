"""Our flags on OpenRLHF's parser, and the launch-time checks of the allocator settings.

Flags follow OpenRLHF's dotted convention so ``hierarchize`` nests them:
``--rollout.allocator`` (alias ``--rollout_allocator``) -> ``args.rollout.allocator``,
``--allocator.min_samples`` -> ``args.allocator.min_samples``, and each allocator's own
options (its ``OptionSpec``s) as ``--allocator.<name>.<option>``.
"""

from __future__ import annotations

import math

import argparse
from types import SimpleNamespace
from typing import Any, Sequence

from openrlhf_cero.allocators import AllocatorError, RolloutAllocator, allocator_class, create_allocator
from openrlhf_cero.allocators.registry import available_allocators, registered_allocators
from openrlhf_cero.openrlhf.launch_inputs import check_launch_inputs


def add_allocator_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rollout allocation (openrlhf-cero)")
    group.add_argument(
        "--rollout.allocator",
        "--rollout_allocator",
        dest="rollout.allocator",
        default="uniform",
        metavar="NAME",
        help=f"how many rollouts each prompt gets: {', '.join(available_allocators())} "
        "(uniform = --rollout.n_samples_per_prompt for every prompt, OpenRLHF's behaviour)",
    )
    group.add_argument(
        "--allocator.min_samples",
        type=int,
        default=None,
        help="fewest rollouts of a trained group (default: 2 for group estimators, else 1)",
    )
    group.add_argument(
        "--allocator.max_samples",
        type=int,
        default=None,
        help="most rollouts one prompt gets in a step (default: 4 x n_samples_per_prompt)",
    )
    group.add_argument(
        "--allocator.seed", type=int, default=None, help="allocator random seed (default: --train.seed)"
    )
    group.add_argument(
        "--allocator.reward_threshold",
        type=float,
        default=None,
        help="count a reward > T as a success; needed when rewards leave [0, 1]",
    )
    group.add_argument(
        "--allocator.fresh_on_resume",
        type=_parse_bool,
        default=False,
        metavar="{true,false}",
        help="with --ckpt.load_enable: restore the model, optimizer and data position but start the allocator "
        "fresh (e.g. after a damaged allocator state)",
    )
    group.add_argument(
        "--dry_run",
        action="store_true",
        default=False,
        help="parse and check every flag (OpenRLHF's checks and ours), print the settings, start nothing",
    )
    for name in registered_allocators():
        cls = allocator_class(name)
        for option in cls.options:
            flag = f"--allocator.{name}.{option.name}"
            hidden = getattr(cls, "test_only", False)
            kwargs: dict[str, Any] = dict(
                default=option.default, help=argparse.SUPPRESS if hidden else f"[{name}] {option.help}"
            )
            if option.type is bool:
                kwargs["type"] = _parse_bool
                kwargs["metavar"] = "{true,false}"
            else:
                kwargs["type"] = option.type
            if option.choices:
                kwargs["choices"] = option.choices
            group.add_argument(flag, **kwargs)


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def check_before_openrlhf(parsed: argparse.Namespace) -> None:
    """Checks that must run before OpenRLHF's own, whose bare ``assert``s report these values
    misleadingly (with ``reinforce``, n = 0 fails as "the number of sample batches ...")."""
    n = getattr(parsed, "rollout.n_samples_per_prompt")
    if n < 1:
        raise AllocatorError(f"--rollout.n_samples_per_prompt={n} must be >= 1 (rollouts drawn per prompt)")


def check_allocator_options_given(argv: Sequence[str], name: str) -> None:
    """Refuse options of an allocator other than the selected one: they would do nothing,
    and a user who typed them believes they do."""
    for token in argv:
        parts = token.split("=", 1)[0].split(".")
        if len(parts) == 3 and parts[0] == "--allocator" and parts[1] in registered_allocators() and parts[1] != name:
            raise AllocatorError(
                f"{parts[0]}.{parts[1]}.{parts[2]} is an option of --rollout_allocator {parts[1]}, but this run uses "
                f"--rollout_allocator {name}; drop the option or select {parts[1]}"
            )


def allocator_settings(args: SimpleNamespace) -> tuple[str, dict[str, Any]]:
    """Name and constructor keywords of the allocator the (hierarchized) args ask for."""
    name = args.rollout.allocator
    cls = allocator_class(name)  # unknown names fail here, listing the registered ones
    common = getattr(args, "allocator", SimpleNamespace())
    seed = getattr(common, "seed", None)
    settings: dict[str, Any] = dict(
        n_samples_per_prompt=args.rollout.n_samples_per_prompt,
        min_samples=getattr(common, "min_samples", None),
        max_samples=getattr(common, "max_samples", None),
        seed=args.train.seed if seed is None else seed,
        advantage_estimator=args.algo.advantage.estimator,
        reward_threshold=getattr(common, "reward_threshold", None),
    )
    own = getattr(common, name, SimpleNamespace())
    for option in cls.options:
        settings[option.name] = getattr(own, option.name, option.default)
    return name, settings


def step_multiple(args: SimpleNamespace) -> int:
    """What every step's sample total must be a multiple of: ``--train.batch_size`` (whole
    optimizer steps) and ``--rollout.micro_batch_size`` (whole experience micro-batches)."""
    return math.lcm(int(args.train.batch_size), int(args.rollout.micro_batch_size))


def allocator_from_args(args: SimpleNamespace) -> RolloutAllocator:
    name, settings = allocator_settings(args)
    return create_allocator(name, **settings)


def check_launch(args: SimpleNamespace) -> RolloutAllocator:
    """Refuse, before anything starts, settings under which the allocator cannot keep
    OpenRLHF's per-step total of ``rollout.batch_size * n_samples_per_prompt`` samples.

    Returns the allocator built once from the args (its constructor checks the bounds).
    """
    allocator = allocator_from_args(args)
    name = allocator.name
    check_launch_inputs(args)
    remote_rewards = bool(getattr(args.reward, "remote_url", None)) or bool(
        getattr(args.train, "agent_func_path", None)
    )
    if allocator.needs_rewards and not remote_rewards:
        raise AllocatorError(
            f"--rollout_allocator {name} decides from rewards while rollouts are generated, but rewards here come "
            "later from a reward model; pass --reward.remote_url (a reward_func .py file or an HTTP reward "
            "server), or use --rollout_allocator uniform with a reward model"
        )
    if name == "uniform":
        return allocator  # stock behaviour: no constraint beyond OpenRLHF's own
    if allocator.variable_step_total and args.algo.dynamic_filtering_enable:
        raise AllocatorError(
            f"--rollout_allocator {name} sets each step's total itself (--allocator.cero.budget_mode global), and "
            "--algo.dynamic_filtering_enable would drop groups from that total afterwards; use one of the two "
            "(CERO's step mode works with dynamic filtering)"
        )
    batch = args.rollout.batch_size
    total = batch * args.rollout.n_samples_per_prompt
    generate_batch = getattr(args.rollout, "vllm_generate_batch_size", None) or batch
    if generate_batch % batch:
        raise AllocatorError(
            f"--rollout.vllm_generate_batch_size={generate_batch} must be a multiple of --rollout.batch_size={batch} "
            f"with --rollout_allocator {name}: each training step is allocated as a whole"
        )
    if total % args.train.batch_size:
        raise AllocatorError(
            f"--train.batch_size={args.train.batch_size} must divide the per-step total of "
            f"--rollout.batch_size x --rollout.n_samples_per_prompt = {total} samples with --rollout_allocator "
            f"{name}; change --train.batch_size (or the rollout batch size)"
        )
    allocator.check_step(total)  # e.g. CERO without skips, whose prompts need min_samples each
    micro = args.rollout.micro_batch_size
    if total % micro:
        raise AllocatorError(
            f"--rollout.micro_batch_size={micro} must divide the per-step total of {total} samples with "
            f"--rollout_allocator {name}"
        )
    return allocator

