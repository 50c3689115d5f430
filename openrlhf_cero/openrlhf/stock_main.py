"""Run OpenRLHF's own ``train_ppo_ray`` command line with our flags and our ``train``.

OpenRLHF 0.11.2 builds its parser and checks its flags inside
``if __name__ == "__main__":`` of ``openrlhf/cli/train_ppo_ray.py``; there is no
function to call. Rather than copy 400 lines of flags (which would drift), we execute
that module's own code: first its definitions, then its ``__main__`` block, with two
names bound differently in the module's namespace: ``argparse`` (so the parser it
builds also has our flags) and ``train`` (so we see the checked args before training
starts). Nothing in OpenRLHF is modified, and OpenRLHF's checks run unchanged.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from types import SimpleNamespace
from typing import Callable, Sequence

STOCK_MODULE = "openrlhf.cli.train_ppo_ray"

TrainFn = Callable[[SimpleNamespace], None]


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def run_stock_main(
    argv: Sequence[str],
    *,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    train: Callable[[SimpleNamespace, TrainFn], None],
    check_parsed: Callable[[argparse.Namespace], None] | None = None,
) -> None:
    """Parse and check ``argv`` as OpenRLHF does, then call ``train(args, stock_train)``.

    ``check_parsed`` sees the flat parsed flags before OpenRLHF's own checks (its bare
    ``assert``s), for values those checks would report misleadingly."""
    spec = importlib.util.find_spec(STOCK_MODULE)
    source = spec.loader.get_source(STOCK_MODULE)
    tree = ast.parse(source, spec.origin)
    main_blocks = [node for node in tree.body if _is_main_guard(node)]
    if len(main_blocks) != 1:
        raise RuntimeError(f"{spec.origin} no longer has exactly one __main__ block; openrlhf==0.11.2 is required")
    definitions = ast.Module(body=[n for n in tree.body if n is not main_blocks[0]], type_ignores=[])
    main_body = ast.Module(body=main_blocks[0].body, type_ignores=[])

    namespace: dict = {"__name__": STOCK_MODULE, "__file__": spec.origin, "__spec__": spec}
    exec(compile(definitions, spec.origin, "exec"), namespace)
    stock_train: TrainFn = namespace["train"]

    class ParserWithOurFlags(argparse.ArgumentParser):
        def parse_args(self, args=None, namespace=None):
            add_arguments(self)
            parsed = super().parse_args(list(argv) if args is None else args, namespace)
            if check_parsed is not None:
                check_parsed(parsed)
            return parsed

    namespace["argparse"] = SimpleNamespace(**{**vars(argparse), "ArgumentParser": ParserWithOurFlags})
    namespace["train"] = lambda args: train(args, stock_train)
    saved_argv = sys.argv
    sys.argv = [spec.origin, *argv]  # for anything in the block that looks at sys.argv
    try:
        exec(compile(main_body, spec.origin, "exec"), namespace)
    finally:
        sys.argv = saved_argv


def parse_stock_args(argv: Sequence[str], add_arguments=None) -> SimpleNamespace:
    """The hierarchized args OpenRLHF's command line gives for ``argv``, after its checks."""
    captured: list[SimpleNamespace] = []
    run_stock_main(
        argv,
        add_arguments=add_arguments or (lambda parser: None),
        train=lambda args, stock_train: captured.append(args),
    )
    return captured[0]
