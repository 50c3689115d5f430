"""``python -m openrlhf_cero.cli.demo [--allocator cero]``: the main job on a laptop.

Builds a tiny model, tokenizer and prompt set offline, trains GRPO for two epochs of the
real OpenRLHF trainer on CPU through ``python -m openrlhf_cero.cli.train_ppo_ray``
(CPU mode: docs/cpu.md), and prints the allocation figures of every step, read back from
the run's tensorboard log, where OpenRLHF logs them next to its own. In the second epoch
the allocator knows the prompts' outcomes from the first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from openrlhf_cero.cpu.tiny import build, smoke_flags

COLUMNS = [
    ("step", None),
    ("samples", "rollout/num_samples"),
    ("prompts", "allocator/prompts_trained"),
    ("skipped", "allocator/prompts_skipped"),
    ("min n", "allocator/samples_per_prompt_min"),
    ("mean n", "allocator/samples_per_prompt_mean"),
    ("max n", "allocator/samples_per_prompt_max"),
    ("zero-var share", "allocator/zero_variance_share"),
    ("drawn (total)", "allocator/rollouts_drawn_total"),
    ("reward mean", "rollout/reward_mean"),
]


def read_scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar OpenRLHF's TensorboardLogger wrote, by tag (without ``train/``) and step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(Path(tb_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag.removeprefix("train/"), {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def format_table(scalars: dict[str, dict[int, float]]) -> str:
    steps = sorted(scalars.get("rollout/num_samples", {}))
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for step in steps:
        cells = [str(step)]
        for _, key in COLUMNS[1:]:
            value = scalars.get(key, {}).get(step)
            cells.append("-" if value is None else f"{value:g}" if value == int(value) else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocator", default="cero", help="uniform, cero, vip or pilot_commit")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: runs/demo-<allocator>")
    parser.add_argument("--prompts", type=int, default=24, help="prompts in the dataset")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the prompts (--train.num_episodes)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more train_ppo_ray flags after --")
    args = parser.parse_args(argv)
    work = (args.work_dir or Path("runs") / f"demo-{args.allocator}").resolve()
    work.mkdir(parents=True, exist_ok=True)

    assets = work / "assets"
    if not (assets / "model").is_dir():
        build(assets, prompts=max(args.prompts, 64), seed=0)
    tb_dir = work / f"tensorboard-{time.strftime('%Y%m%d-%H%M%S')}"
    flags = smoke_flags(
        assets,
        work,
        **{
            "data.max_samples": args.prompts,
            "train.num_episodes": args.epochs,
            "rollout.n_samples_per_prompt": 8,
            "logger.tensorboard_dir": tb_dir,
            "ckpt.save_steps": -1,
        },
    )
    extra = [a for a in args.extra if a != "--"]
    command = [sys.executable, "-m", "openrlhf_cero.cli.train_ppo_ray", *flags, "--rollout_allocator",
               args.allocator, *extra]
    log_path = work / "train.log"
    print(f"training with --rollout_allocator {args.allocator} on CPU (log: {log_path}) ...", flush=True)
    started = time.time()
    with open(log_path, "w") as log:
        result = subprocess.run(command, env={**os.environ, "OPENRLHF_CERO_CPU": "1"}, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(Path(log_path).read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"training failed (exit {result.returncode}); full log: {log_path}")
    print(f"done in {time.time() - started:.0f} s: rollout.batch_size 4 x n_samples_per_prompt 8 = 32 samples "
          f"per step, allocated by {args.allocator}:\n")
    print(format_table(read_scalars(tb_dir)))


if __name__ == "__main__":
    main()
