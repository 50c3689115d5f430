"""Supervised warm-up: the starting checkpoint that every allocator and seed shares.

RLVR starts from a model that already solves some prompts; GRPO cannot learn from a prompt
it never solves. So the policy is first trained by teacher forcing on freshly drawn problems
(never a held-out one) until its sampled pass rate on a probe of training prompts reaches
``warmup_target``. Each training prompt's sampled pass rate at that point is recorded with
its bucket, so a simulator scenario can be built from the real starting distribution.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.small_model.config import Config
from benchmarks.small_model.model import (
    TinyDecoder, completion_logprobs, greedy_accuracy, parameter_count, pass_rates,
)
from benchmarks.small_model.task import BUCKET_NAMES, PromptSet, bucket_indices, make_prompt_set, random_problem


def build_model(cfg: Config, device: torch.device) -> TinyDecoder:
    return TinyDecoder(cfg.width, cfg.layers, cfg.heads).to(device)


def teacher_forcing_batch(rng: np.random.Generator, size: int, excluded: set[str], buckets: np.ndarray) -> list[str]:
    """``size`` fresh problems of the task's buckets, none of them in ``excluded`` (held-out)."""
    out: list[str] = []
    while len(out) < size:
        text = random_problem(rng, buckets)
        if text not in excluded:
            out.append(text)
    return out


def warm_up(
    cfg: Config, train: PromptSet, held_out: PromptSet, device: torch.device, log: Callable[[str], None] = print
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Teacher forcing until the probe's mean sampled pass rate reaches the target.

    Returns the model state and a description: steps, seconds, starting greedy accuracies, and
    each training prompt's sampled pass rate (``warmup_pass_samples`` draws) with its bucket."""
    torch.manual_seed(cfg.data_seed)
    rng = np.random.default_rng(cfg.data_seed + 1)
    generator = torch.Generator(device).manual_seed(cfg.data_seed)
    model = build_model(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warmup_lr, betas=(0.9, 0.98), weight_decay=0.0)
    excluded = set(held_out.texts)
    buckets = bucket_indices(cfg.buckets)
    probe = train.subset(np.arange(min(cfg.probe_size, len(train.texts))))
    start, steps, probe_rate, history = time.time(), 0, 0.0, []
    while steps < cfg.warmup_max_steps and time.time() - start < cfg.warmup_max_seconds:
        batch = make_prompt_set(teacher_forcing_batch(rng, cfg.warmup_batch, excluded, buckets)).to(device)
        logp, counted = completion_logprobs(model, batch.tokens, batch.mask, batch.targets)
        loss = -logp.sum() / counted.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        if steps % cfg.warmup_check_every == 0:
            probe_rate = float(pass_rates(model, probe, 8, generator).mean())
            history.append((steps, float(loss.detach()), probe_rate))
            log(f"warm-up step {steps}: loss {float(loss.detach()):.3f}, probe sampled pass rate {probe_rate:.3f}")
            if probe_rate >= cfg.warmup_target:
                break
    rates = pass_rates(model, train, cfg.warmup_pass_samples, generator)
    info = {
        "steps": steps,
        "seconds": time.time() - start,
        "probe_pass_rate": probe_rate,
        "history": history,
        "parameters": parameter_count(model),
        "train_pass_rate_n16": describe_pass_rates(rates, train.buckets),
        "held_out_greedy": greedy_accuracy(model, held_out),
        "train_greedy": greedy_accuracy(model, train),
        "train_prompts": prompt_table(train, rates, cfg.warmup_pass_samples),
    }
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, info


def prompt_table(train: PromptSet, rates: np.ndarray, samples: int) -> dict[str, Any]:
    """Per training prompt, in dataset order: text, bucket id, sampled starting pass rate.

    Columns rather than rows keep the results JSON small; ``bucket_names[i]`` names bucket id i."""
    return {
        "samples": int(samples),
        "bucket_names": BUCKET_NAMES,
        "text": list(train.texts),
        "bucket": train.buckets.astype(int).tolist(),
        "pass_rate": [round(float(r), 4) for r in rates],
    }


def describe_pass_rates(rates: np.ndarray, buckets: np.ndarray) -> dict[str, Any]:
    """How the starting pass rates spread: the share of prompts that cannot give a gradient."""
    by_bucket = {BUCKET_NAMES[b]: round(float(rates[buckets == b].mean()), 3) for b in np.unique(buckets)}
    return {
        "mean": float(rates.mean()),
        "share_zero": float((rates == 0).mean()),
        "share_one": float((rates == 1).mean()),
        "share_between": float(((rates > 0) & (rates < 1)).mean()),
        "histogram_tenths": np.histogram(rates, bins=10, range=(0, 1))[0].tolist(),
        "by_bucket": by_bucket,
    }
