"""Run the real ``openrlhf.cli.train_ppo_ray`` on the tiny assets, in CPU mode, and measure it.

``python -m openrlhf_cero.cpu.smoke WORK_DIR [--assets DIR] [-- EXTRA FLAGS...]``

Builds the tiny assets when ``--assets`` is not given, installs CPU mode in this
process, starts Ray with :func:`openrlhf_cero.cpu.ray_init_kwargs`, and runs the stock
trainer module with :func:`openrlhf_cero.cpu.tiny.smoke_flags` plus the extra flags
(dotted OpenRLHF flags, e.g. ``-- --ckpt.load_enable`` or ``-- --train.async_enable``).
It prints the wall time and the peak resident memory summed over this process and all
its descendants (Ray's GCS, raylet and workers); shared pages count once per process,
so the sum over-states the true footprint somewhat.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import threading
import time
from pathlib import Path

import psutil


class TreeMemorySampler:
    """Peak of the summed RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        root = psutil.Process()
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_trainer(flags: list[str]) -> None:
    """Run the stock trainer module as ``__main__`` with ``flags`` (Ray must already be up)."""
    saved_argv = sys.argv
    sys.argv = ["openrlhf.cli.train_ppo_ray", *flags]
    try:
        runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description="CPU smoke run of the real OpenRLHF trainer.")
    parser.add_argument("work_dir")
    parser.add_argument("--assets", default=None, help="tiny assets dir (built under WORK_DIR/assets if absent)")
    args = parser.parse_args(argv)

    os.environ["OPENRLHF_CERO_CPU"] = "1"
    from openrlhf_cero import cpu
    from openrlhf_cero.cpu import tiny

    work = Path(args.work_dir).resolve()
    assets = Path(args.assets).resolve() if args.assets else work / "assets"
    if not (assets / tiny.MODEL_DIR).exists():
        tiny.build(assets)

    start = time.perf_counter()
    with TreeMemorySampler() as memory:
        cpu.install()
        import ray

        ray.init(**cpu.ray_init_kwargs())
        try:
            run_trainer(tiny.smoke_flags(assets, work) + extra)
        finally:
            ray.shutdown()
    wall = time.perf_counter() - start
    print(f"[cpu-smoke] wall {wall:.1f} s, peak RSS of process tree {memory.peak_bytes / 2**30:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
