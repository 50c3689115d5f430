"""Build DeepSpeed's CPU ops once, before any trainer needs them.

Without a GPU, DeepSpeed's CPU accelerator JIT-compiles its C++ ops the first time a
trainer process touches them: ``fused_adam`` (the Adam step of every ZeRO stage),
``deepspeed_shm_comm`` (set up by ``deepspeed.init_distributed``) and ``cpu_adam``
(``--ds.adam_offload``). On 2 cores that is about two minutes, inside the first
training run, in every Ray worker at once. Building them here, into the same
``TORCH_EXTENSIONS_DIR`` that :func:`openrlhf_cero.cpu.ray_init_kwargs` hands to the
workers, moves that cost into the setup step; a second run only loads the cached
``.so`` files (seconds).

Usage: ``python -m openrlhf_cero.cpu.prebuild_ops [--ops fused_adam shm_comm cpu_adam]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from openrlhf_cero.cpu.paths import torch_extensions_dir

# Our short name -> DeepSpeed op-builder class name on the CPU accelerator.
OP_BUILDERS: dict[str, str] = {
    "fused_adam": "FusedAdamBuilder",
    "shm_comm": "ShareMemCommBuilder",
    "cpu_adam": "CPUAdamBuilder",
}


def build(ops: list[str]) -> dict[str, float]:
    """Load (building when not cached) each op; returns seconds spent per op."""
    unknown = sorted(set(ops) - set(OP_BUILDERS))
    if unknown:
        raise SystemExit(f"--ops: unknown op(s) {unknown}; valid: {sorted(OP_BUILDERS)}")
    # DeepSpeed reads both when it is first imported.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["TORCH_EXTENSIONS_DIR"] = torch_extensions_dir()

    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        raise SystemExit(
            f"prebuild_ops builds DeepSpeed's CPU ops, but the accelerator is {accelerator.device_name()!r}; "
            "on a GPU machine DeepSpeed builds its CUDA ops itself"
        )
    seconds: dict[str, float] = {}
    for op in ops:
        start = time.perf_counter()
        accelerator.create_op_builder(OP_BUILDERS[op]).load(verbose=False)
        seconds[op] = time.perf_counter() - start
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="+", default=list(OP_BUILDERS), help=f"subset of {list(OP_BUILDERS)}")
    args = parser.parse_args(argv)
    seconds = build(args.ops)
    for op, took in seconds.items():
        print(f"{op}: ready in {took:.1f} s")
    print(f"TORCH_EXTENSIONS_DIR={torch_extensions_dir()}", file=sys.stderr)


if __name__ == "__main__":
    main()
