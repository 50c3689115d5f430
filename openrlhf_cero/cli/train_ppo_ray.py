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
from typing import Callable, Sequence

from openrlhf_cero.allocators import AllocatorError


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from openrlhf_cero import cpu

    if cpu.cpu_mode_requested():
        cpu.install()

    from openrlhf_cero.openrlhf.flags import check_launch
    from openrlhf_cero.openrlhf.native import add_plugin_arguments, prepare_hooks
    from openrlhf_cero.openrlhf.stock_main import run_stock_main

    def train(args: SimpleNamespace, stock_train: Callable[[SimpleNamespace], None]) -> None:
        try:
            allocator = check_launch(args)
            runtime_hooks = prepare_hooks(args)  # False where OpenRLHF has native hooks (native.py)
        except AllocatorError as error:
            print(f"train_ppo_ray: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if args.dry_run:
            print(f"dry run: flags are valid; allocator {allocator.name} {allocator.state_dict()['settings']}")
            return
        if runtime_hooks:
            from openrlhf_cero.openrlhf.trainers import use_allocating_trainers

            use_allocating_trainers()
        if cpu.cpu_mode_requested():
            import ray

            if not ray.is_initialized():
                ray.init(**cpu.ray_init_kwargs())
        stock_train(args)

    run_stock_main(argv, add_arguments=add_plugin_arguments, train=train)


if __name__ == "__main__":
    main()
