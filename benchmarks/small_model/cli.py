"""Command line of the small-model GRPO benchmark.

    PYTHONPATH=. python -m benchmarks.small_model --preset cpu --out OUT [--allocators ...] [--seeds 0,1]
    PYTHONPATH=. python -m benchmarks.small_model --smoke --out /tmp/small_model_smoke      # CPU, a minute
    PYTHONPATH=. python -m benchmarks.small_model --report docs/results/small_model_cpu.json [--plot PREFIX]
    PYTHONPATH=. python -m benchmarks.small_model --sweep docs/results/small_model_cpu_lr_sweep.json
    PYTHONPATH=. python -m benchmarks.small_model --preset cpu --allocators uniform+cbs,cero+cbs --out OUT  # + scheduler
    PYTHONPATH=. python -m benchmarks.small_model --report docs/results/small_model_cpu.json \
        --scheduler-results docs/results/small_model_cpu_cbs.json         # the scheduler entries against their pairs
    PYTHONPATH=. python -m benchmarks.small_model --preset cpu --allocators uniform+cbs \
        --scheduler-options '{"cbs": {"ranking": "advantage"}}' --out OUT  # CBS's no-learning ablation
    PYTHONPATH=. python -m benchmarks.small_model --report docs/results/small_model_cpu.json \
        --scheduler-results docs/results/small_model_cpu_cbs.json \
        --ablation-results docs/results/small_model_cpu_cbs_ablation.json  # the ablation against the bandit

``benchmarks/small_model_grpo.py`` is the same command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.small_model import config as presets
from benchmarks.small_model.config import ALL_ALLOCATORS, Config
from benchmarks.small_model.grpo import write_json
from benchmarks.small_model.page import fill_page, page_blocks
from benchmarks.small_model.report import compact, markdown_report, plot, settings_table, summarise, sweep_table
from benchmarks.small_model.report_scheduler import ablation_table, buffer_sweep_table, scheduler_report
from benchmarks.small_model.runs import merge_results, run_all
from benchmarks.small_model.task import rl_datasets

SKIPPED_FIELDS = ("deadline", "allocator_options", "scheduler_options")


def build_config(args: argparse.Namespace) -> Config:
    """The preset (smoke, cpu or the GPU defaults), then every flag given explicitly."""
    settings = dict(presets.SMOKE) if args.smoke else dict(presets.CPU) if args.preset == "cpu" else {}
    for name in Config.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None and name not in SKIPPED_FIELDS:
            settings[name] = value
    settings["allocator_options"] = json.loads(args.allocator_options)
    settings["scheduler_options"] = json.loads(args.scheduler_options)
    if args.time_limit:
        settings["deadline"] = time.time() + args.time_limit
    return Config(**settings)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="GRPO with the rollout allocators on a small transformer (arithmetic).")
    p.add_argument("--out", type=Path, help="folder for results.json and log.txt")
    p.add_argument("--allocators", default=",".join(ALL_ALLOCATORS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes sharing the device)")
    p.add_argument("--time-limit", type=float, default=0.0, help="seconds from start after which runs stop")
    p.add_argument("--smoke", action="store_true", help="tiny CPU setting for debugging")
    p.add_argument("--preset", choices=("gpu", "cpu"), default="gpu", help="base setting; flags override it")
    p.add_argument("--report", type=Path, nargs="+", help="print the page's tables from results.json files "
                   "(same settings, other seeds) instead of running")
    p.add_argument("--sweep", type=Path, nargs="+", help="print the learning-rate sweep table from results files")
    p.add_argument("--plot", help="with --report: write PNG plots with this path prefix")
    p.add_argument("--save-compact", type=Path, help="with --report: also write the merged results, steps as "
                   "rounded columns, to this path (the file committed beside the page)")
    p.add_argument("--update-page", type=Path, help="with --report and --sweep: rewrite the generated blocks of "
                   "this markdown page (docs/benchmarks-small-model.md) instead of printing")
    p.add_argument("--scheduler-results", type=Path, nargs="+", help="with --report: results files of entries "
                   "ALLOCATOR+SCHEDULER (e.g. docs/results/small_model_cpu_cbs.json), compared against uniform and "
                   "their allocator alone in --report's files, paired by seed; with --update-page, the scheduler block")
    p.add_argument("--buffer-sweep", type=Path, nargs="+", help="with --report and --scheduler-results: results "
                   "files of uniform+cbs at one scheduler buffer_size each; the buffer-size table (with the "
                   "--scheduler-results' size as a row, paired with --report's uniform); with --update-page, its block")
    p.add_argument("--ablation-results", type=Path, nargs="+", help="with --report and --scheduler-results: results "
                   "files of uniform+cbs run with ranking=advantage (the no-learning ablation); the table of the "
                   "bandit and the rule against uniform and against each other, paired by seed; with --update-page, "
                   "its block")
    p.add_argument("--gain-share", type=float, default=0.75, help="target = start + this share of uniform's gain")
    p.add_argument("--checkpoint", type=Path, help="warm-up checkpoint: loaded if it exists, else written")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    for f in Config.__dataclass_fields__.values():
        if f.name in SKIPPED_FIELDS:
            continue
        kind = type(f.default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    p.add_argument("--allocator-options", default="{}", help='JSON, e.g. {"cero": {"prompt_oversample": 2}}')
    p.add_argument("--scheduler-options", default="{}", help='JSON, options of the schedulers that entries '
                   'ALLOCATOR+SCHEDULER (e.g. cero+cbs) use, e.g. {"cbs": {"buffer_size": 256}}')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.update_page:
        if not (args.report and args.sweep):
            parser().error("--update-page needs --report and --sweep")
        results = merge_results([json.loads(path.read_text()) for path in args.report])
        scheduled = (merge_results([json.loads(path.read_text()) for path in args.scheduler_results])
                     if args.scheduler_results else None)
        ablation = (merge_results([json.loads(path.read_text()) for path in args.ablation_results])
                    if args.ablation_results and scheduled else None)
        blocks = page_blocks(results, [json.loads(path.read_text()) for path in args.sweep], args.gain_share, scheduled,
                             [json.loads(path.read_text()) for path in args.buffer_sweep or ()], ablation)
        args.update_page.write_text(fill_page(args.update_page.read_text(), blocks))
        if args.plot:
            print("\n".join(plot(results, args.plot)))
        return 0
    if args.sweep:
        print(sweep_table([json.loads(path.read_text()) for path in args.sweep]))
        return 0
    if args.report:
        results = merge_results([json.loads(path.read_text()) for path in args.report])
        if args.save_compact:
            if "rl_prompts" not in results:  # results written before the sizes were recorded
                c = results["config"]
                train, held_out = rl_datasets(c["data_seed"], c["train_size"], c["eval_size"], c.get("buckets", ""),
                                              c.get("rl_buckets", ""), c.get("rl_train_size", 0))
                results["rl_prompts"] = {"train": len(train.texts), "held_out": len(held_out.texts)}
            args.save_compact.parent.mkdir(parents=True, exist_ok=True)
            args.save_compact.write_text(json.dumps(compact(results), separators=(",", ":")))
        print(markdown_report(results, gain_share=args.gain_share))
        print()
        print(settings_table(results))
        scheduled = None
        if args.scheduler_results:
            scheduled = merge_results([json.loads(path.read_text()) for path in args.scheduler_results])
            print()
            print(scheduler_report(results, scheduled, args.gain_share))
        if args.buffer_sweep:
            files = [json.loads(path.read_text()) for path in args.buffer_sweep] + ([scheduled] if scheduled else [])
            print()
            print(buffer_sweep_table(results, files))
        if args.ablation_results and scheduled:
            ablation = merge_results([json.loads(path.read_text()) for path in args.ablation_results])
            print()
            print(ablation_table(results, scheduled, ablation, args.gain_share))
        if args.plot:
            print("\n".join(plot(results, args.plot)), file=sys.stderr)
        return 0
    if args.out is None:
        parser().error("--out is required unless --report or --sweep is given")
    cfg = build_config(args)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --preset cpu (or --smoke for a quick check)", file=sys.stderr)
        return 2
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "log.txt"

    def log(line: str) -> None:
        print(line, flush=True)
        with log_path.open("a") as fh:
            fh.write(line + "\n")

    torch.set_num_threads(args.threads)
    started = time.time()
    allocators = [a for a in args.allocators.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",")]
    results = run_all(cfg, allocators, seeds, args.out, args.jobs, log, args.checkpoint)
    results["total_seconds"] = time.time() - started
    write_json(args.out / "results.json", results)
    if summarise(results):
        log(markdown_report(results, gain_share=args.gain_share))
    log(f"total {time.time() - started:.0f} s")
    return 0
