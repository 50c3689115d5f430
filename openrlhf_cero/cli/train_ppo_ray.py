"""``python -m openrlhf_cero.cli.train_ppo_ray <OpenRLHF flags> --rollout_allocator NAME``.

Every flag of ``python -m openrlhf.cli.train_ppo_ray`` works unchanged (OpenRLHF's own
parser and checks run), plus ours (``--help`` lists both). With
``OPENRLHF_CERO_CPU=1`` the real trainer runs on a machine without a GPU (see
docs/cpu.md). Under ``ray job submit ... -- python -m openrlhf_cero.cli.train_ppo_ray``
or with a running cluster it connects as OpenRLHF does.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Callable, NoReturn, Sequence

from openrlhf_cero.allocators import AllocatorError
from openrlhf_cero.schedulers import SchedulerError


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from openrlhf_cero import cpu

    launching = not ({"-h", "--help", "--dry_run"} & set(argv))
    if cpu.cpu_mode_requested():
        cpu.install()
    elif not cpu.vllm_importable():
        if launching:
            _fail(
                "vLLM is not installed, and this command starts real rollout engines: install it with "
                f"`pip install vllm=={cpu.VLLM_VERSION}` on a GPU machine, or set {cpu.CPU_MODE_ENV}=1 to run on CPU "
                "with the stand-in engine (docs/cpu.md)"
            )
        cpu.use_vllm_standin_for_parsing()  # --help / --dry_run generate nothing

    from openrlhf_cero.openrlhf.flags import check_allocator_options_given, check_before_openrlhf, check_launch
    from openrlhf_cero.openrlhf.native import add_plugin_arguments, prepare_hooks
    from openrlhf_cero.openrlhf.scheduler_flags import (
        check_scheduler_launch,
        check_scheduler_options_given,
        scheduler_settings,
    )
    from openrlhf_cero.openrlhf.stock_main import run_stock_main

    def train(args: SimpleNamespace, stock_train: Callable[[SimpleNamespace], None]) -> None:
        check_allocator_options_given(argv, args.rollout.allocator)
        allocator = check_launch(args)
        check_scheduler_options_given(argv, args.rollout.scheduler)
        scheduler = check_scheduler_launch(args)
        runtime_hooks = prepare_hooks(args)  # False where OpenRLHF has native hooks (native.py)
        if args.dry_run:
            print(f"dry run: flags are valid; allocator {allocator.name} {allocator.state_dict()['settings']}")
            if scheduler is not None:
                print(f"dry run: scheduler {scheduler.name} {scheduler_settings(args)[1]}")
            return
        if runtime_hooks:
            from openrlhf_cero.openrlhf.trainers import use_allocating_trainers

            use_allocating_trainers()
        if cpu.cpu_mode_requested():
            import ray

            if not ray.is_initialized():
                ray.init(**cpu.ray_init_kwargs())
        stock_train(args)

    try:
        run_stock_main(argv, add_arguments=add_plugin_arguments, train=train, check_parsed=check_before_openrlhf)
    except (AllocatorError, SchedulerError) as error:
        _fail(str(error))


def _fail(message: str) -> NoReturn:
    """One line on stderr, argparse's exit status for bad input."""
    print(f"train_ppo_ray: error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
