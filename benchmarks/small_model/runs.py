"""Every allocator and seed from one warm-up checkpoint, written to one results JSON.

The file is rewritten as runs progress, so a killed command still leaves every finished run
and the partial curves of the others. It holds the config, the warm-up (with each training
prompt's starting pass rate and bucket, enough to build a simulator scenario from), and per
run: the allocator's resolved settings, the evaluation curves and the per-step figures.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
from dataclasses import MISSING, asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.small_model.config import NOT_SETTINGS, Config
from benchmarks.small_model.grpo import run_allocator, write_json
from benchmarks.small_model.report import steps_of
from benchmarks.small_model.task import build_datasets, rl_datasets, rl_rows
from benchmarks.small_model.model import pass_rates
from benchmarks.small_model.warmup import build_model, prompt_table, warm_up


def _worker(cfg_dict: dict, name: str, seed: int, state_path: str, progress_path: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = Config(**cfg_dict)
    state = torch.load(state_path, map_location="cpu")
    return run_allocator(cfg, name, seed, state, Path(progress_path))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads per run)"


def load_or_warm_up(cfg: Config, device: torch.device, checkpoint: Path | None, log: Callable[[str], None]):
    """The shared starting checkpoint: loaded from ``checkpoint`` if it exists, else trained (and saved)."""
    train, held_out = (s.to(device) for s in build_datasets(cfg.data_seed, cfg.train_size, cfg.eval_size, cfg.buckets))
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu")
        log(f"warm-up checkpoint loaded from {checkpoint}")
        state, warm = saved["state"], json.loads(saved["info"])
        if "train_prompts" not in warm:  # a checkpoint from before the table was recorded
            model = build_model(cfg, device)
            model.load_state_dict(state)
            generator = torch.Generator(device).manual_seed(cfg.data_seed + 2)
            rates = pass_rates(model, train, cfg.warmup_pass_samples, generator)
            warm["train_prompts"] = prompt_table(train, rates, cfg.warmup_pass_samples)
            warm["train_prompts"]["note"] = "sampled after loading the checkpoint (generator seed data_seed + 2)"
            torch.save({"state": state, "info": json.dumps(warm)}, checkpoint)
        return state, warm
    state, warm = warm_up(cfg, train, held_out, device, log)
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": state, "info": json.dumps(warm)}, checkpoint)
    return state, warm


AUTO_BAND = (0.05, 0.9)  # rl_buckets="auto": buckets whose mean starting pass rate lies in this band


def auto_rl_buckets(by_bucket: dict[str, float], band: tuple[float, float] = AUTO_BAND) -> str:
    """The buckets the warm-up left in between, neither about never nor about always solved:
    GRPO can learn there, and the accuracy there can move (the CPU setting's choice, as a rule)."""
    chosen = [name for name, rate in by_bucket.items() if band[0] <= rate <= band[1]]
    if not chosen:
        raise SystemExit(f"rl_buckets=auto: no bucket has a mean starting pass rate in {band}: {by_bucket}")
    return ",".join(chosen)


def rl_prompt_table(cfg: Config, warm: dict[str, Any]) -> dict[str, Any]:
    """The warm-up's per-prompt table kept to the prompts GRPO trains on (``rl_buckets``), in
    the order of the training set: text, bucket id and sampled starting pass rate."""
    table = warm["train_prompts"]
    rows = rl_rows(np.array(table["bucket"]), cfg.rl_buckets, cfg.rl_train_size).tolist()
    out = {k: v for k, v in table.items() if not isinstance(v, list) or k == "bucket_names"}
    for key in ("text", "bucket", "pass_rate"):
        out[key] = [table[key][i] for i in rows]
    return out


def run_all(
    cfg: Config, allocators: list[str], seeds: list[int], out: Path, jobs: int,
    log: Callable[[str], None] = print, checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Warm up (or load ``checkpoint``), then GRPO for every allocator and seed; no allocators: warm-up only.

    Runs are ordered seed by seed, so a run cut short by time still has complete pairs."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    state, warm = load_or_warm_up(cfg, device, checkpoint, log)
    if cfg.rl_buckets == "auto":
        cfg = replace(cfg, rl_buckets=auto_rl_buckets(warm["train_pass_rate_n16"]["by_bucket"]))
        log(f"rl_buckets=auto: {cfg.rl_buckets}")
    log(f"warm-up: {json.dumps({k: v for k, v in warm.items() if k not in ('history', 'train_prompts')})}")
    train, held_out = rl_datasets(cfg.data_seed, cfg.train_size, cfg.eval_size, cfg.buckets, cfg.rl_buckets,
                                  cfg.rl_train_size)
    results: dict[str, Any] = {"config": asdict(cfg), "device": device_name(device), "warmup": warm,
                               "rl_prompts": {"train": len(train.texts), "held_out": len(held_out.texts)},
                               "train_prompts": rl_prompt_table(cfg, warm), "runs": {}}
    results_path = out / "results.json"
    write_json(results_path, results)
    if not allocators:
        return results
    state_path = work / "warmup.pt"
    torch.save(state, state_path)
    tasks = [(name, seed) for seed in seeds for name in allocators]
    progress = {t: work / f"run_{t[0]}_{t[1]}.json" for t in tasks}
    for p in progress.values():
        p.unlink(missing_ok=True)

    def collect() -> None:
        for (name, seed), p in progress.items():
            if p.exists():
                try:
                    results["runs"][f"{name}/{seed}"] = json.loads(p.read_text())
                except json.JSONDecodeError:
                    pass
        write_json(results_path, results)

    if jobs <= 1:
        for name, seed in tasks:
            log(f"run {name} seed {seed}")
            try:
                results["runs"][f"{name}/{seed}"] = run_allocator(cfg, name, seed, state, progress[(name, seed)])
                log(run_line(results["runs"][f"{name}/{seed}"]))
            except Exception as exc:  # one bad entry (e.g. options the bounds reject) must not stop the others
                log(f"run {name} seed {seed} FAILED: {exc!r}")
                results["runs"][f"{name}/{seed}"] = {"allocator": name, "seed": seed, "error": repr(exc)}
            write_json(results_path, results)
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(_worker, asdict(cfg), name, seed, str(state_path), str(progress[(name, seed)]),
                        torch.get_num_threads()): (name, seed)
            for name, seed in tasks
        }
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=15)
            collect()
            for f in finished:
                name, seed = futures[f]
                if f.exception() is not None:
                    log(f"run {name} seed {seed} FAILED: {f.exception()!r}")
                    results["runs"][f"{name}/{seed}"] = {"allocator": name, "seed": seed, "error": repr(f.exception())}
                else:
                    results["runs"][f"{name}/{seed}"] = f.result()
                    log(run_line(f.result()))
            write_json(results_path, results)
    return results


def run_line(run: dict) -> str:
    """One log line per finished run."""
    last = run["evals"][-1]
    steps = steps_of(run)
    zero = np.mean([s["zero_variance_share"] for s in steps]) if steps else float("nan")
    return (
        f"{run['allocator']:>17} seed {run['seed']}: {last['rollouts']:>8} rollouts, "
        f"{run.get('optimizer_steps', len(steps))} optimizer steps, "
        f"held-out {last['held_out']:.3f}, train {last['train']:.3f}, zero-variance {zero:.3f}, "
        f"{run['wall_seconds']:.0f} s"
    )


def merge_results(parts: list[dict]) -> dict:
    """One results dict from runs of the same settings (e.g. seeds run in separate commands)."""
    first = parts[0]
    # A key a file lacks (written before the setting existed) had the setting's default.
    default = {name: f.default_factory() if f.default_factory is not MISSING else f.default
               for name, f in Config.__dataclass_fields__.items()}
    for other in parts[1:]:
        keys = set(first["config"]) | set(other["config"])
        differ = {k for k in keys if k not in NOT_SETTINGS
                  and first["config"].get(k, default.get(k)) != other["config"].get(k, default.get(k))}
        if differ:
            raise SystemExit(f"cannot merge results of different settings: {sorted(differ)}")
        clash = set(first["runs"]) & set(other["runs"])
        if clash:
            raise SystemExit(f"runs present twice: {sorted(clash)}")
    merged = dict(first)
    merged["runs"] = {k: v for part in parts for k, v in part["runs"].items()}
    return merged
