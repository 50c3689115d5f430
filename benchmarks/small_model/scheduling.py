"""The PPO update of the small-model benchmark, with and without a rollout scheduler.

Without a scheduler every rollout a step draws trains once, on the policy that drew it, so
PPO's ratio is 1. A scheduler (``--rollout_scheduler``, openrlhf_cero.schedulers) changes
that: it picks which of the step's fresh rollouts train, and brings back rollouts buffered
from earlier steps, drawn by an older policy. Those need the off-policy correction OpenRLHF
applies to every rollout, so the loss here is OpenRLHF's PolicyLoss: PPO's clipped surrogate
with ``ratio = exp(logp_now - logp_drew)`` and clip 0.2, token-mean. For a fresh rollout the
drawing policy *is* the current one, the ratio is exactly 1, and its gradient is the plain
policy gradient's (a test checks it bit for bit), so runs without a scheduler are unchanged.

:class:`ScheduledTraining` is the trainer's side of the scheduler contract
(openrlhf_cero/schedulers/base.py): it builds the step's RolloutTable, trains on the
selection, keeps each buffered rollout's payload (prompt, completion, the drawing policy's
token log-probabilities, its advantage from its whole drawn group), and reports each trained
rollout's gain ``advantage * mean over tokens of (log pi_after - log pi_before)`` through
``feedback``: the first-order change the update made to the surrogate on that rollout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.small_model.model import TinyDecoder, completion_logprobs
from benchmarks.small_model.task import PAD, PromptSet
from openrlhf_cero.schedulers import RolloutScheduler, RolloutTable, SchedulerError, create_scheduler

CLIP_EPS = 0.2  # OpenRLHF's default eps_clip (PolicyLoss clip_eps_low = clip_eps_high)


def split_entry(entry: str) -> tuple[str, str | None]:
    """``"cero+cbs"`` -> ("cero", "cbs"); ``"cero"`` -> ("cero", None): a benchmark entry is an
    allocator, optionally with a scheduler, so both axes share one ``--allocators`` list."""
    allocator, _, scheduler = entry.partition("+")
    return allocator, (scheduler or None)


def ppo_clip_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, counted: torch.Tensor, advantages: torch.Tensor,
    clip_eps: float = CLIP_EPS,
) -> torch.Tensor:
    """OpenRLHF's PolicyLoss, token-mean: ``-min(r A, clip(r, 1-eps, 1+eps) A)`` per token with
    ``r = exp(logp - old_logp)``, averaged over the counted tokens of the whole batch."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -(surrogate * counted).sum() / counted.sum().clamp(min=1)


def clipped_update(
    model: TinyDecoder, opt: torch.optim.Optimizer, train: PromptSet, prompt_rows: torch.Tensor,
    completions: torch.Tensor, advantages: torch.Tensor, reused_old_logp: torch.Tensor | None, grad_clip: float,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch whose first rows are fresh (drawn by the current policy) and
    whose last ``len(reused_old_logp)`` rows are reused with the drawing policy's log-probs.

    A fresh row's old log-probs are its current ones, detached, so its ratio is exactly 1 (no
    second forward that could differ in rounding). Returns the loss, the pre-update token
    log-probs (detached) and the counted-token mask."""
    logp, counted = completion_logprobs(model, train.tokens[prompt_rows], train.mask[prompt_rows], completions)
    old = logp.detach()
    if reused_old_logp is not None and len(reused_old_logp):
        old = torch.cat([old[: len(old) - len(reused_old_logp)], reused_old_logp.to(old)])
    loss = ppo_clip_loss(logp, old, counted, advantages)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(loss.detach()), logp.detach(), counted


def token_mean(values: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Per-row mean over the counted tokens (rows without tokens give 0)."""
    return (values * counted).sum(1) / counted.sum(1).clamp(min=1)


@dataclass
class Payload:
    """What a buffered rollout needs to train again later: its prompt row, its completion, the
    drawing policy's token log-probs (for the ratio) and the advantage from its drawn group."""

    prompt_row: int
    completion: torch.Tensor
    old_logp: torch.Tensor
    advantage: float


def build_scheduler(name: str, seed: int, options: dict[str, dict[str, Any]]) -> RolloutScheduler:
    """A registered scheduler with the run's seed and the options given for it by name."""
    return create_scheduler(name, seed=seed, **options.get(name, {}))


def scheduler_settings(scheduler: RolloutScheduler) -> dict[str, Any]:
    """The scheduler's declared options as it runs with them (defaults resolved), JSON-safe."""
    out: dict[str, Any] = {"name": scheduler.name}
    for spec in getattr(scheduler, "options", ()):
        if hasattr(scheduler, spec.name):
            value = getattr(scheduler, spec.name)
            out[spec.name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


class ScheduledTraining:
    """The trainer's side of the scheduler contract, for one run: select, train, feedback, buffer."""

    def __init__(self, scheduler: RolloutScheduler) -> None:
        self.scheduler = scheduler
        self.payloads: dict[int, Payload] = {}

    def update(
        self, model: TinyDecoder, opt: torch.optim.Optimizer, train: PromptSet, prompt_ids: np.ndarray,
        group: np.ndarray, rewards: np.ndarray, advantages: np.ndarray, prompt_rows: torch.Tensor,
        completions: torch.Tensor, grad_clip: float,
    ) -> tuple[float, dict[str, float]]:
        """One step: the fresh rollouts (one row each, groups contiguous, ``advantages`` over each
        whole drawn group) go to ``select``; the selection trains; gains go to ``feedback``.

        Returns the loss and the step's figures: the scheduler's metrics (prefixed
        ``scheduler_``), how many fresh and reused rollouts trained, the share of reused tokens
        outside the clip range before the update, and the seconds the scheduler's side cost."""
        device = completions.device
        started = time.perf_counter()
        lengths = (completions != PAD).sum(1).cpu().numpy().astype(np.float64)
        table = RolloutTable(prompt_id=np.asarray(prompt_ids, dtype=np.uint64), group=np.asarray(group, dtype=np.int64),
                             reward=np.asarray(rewards, dtype=np.float64),
                             advantage=np.asarray(advantages, dtype=np.float64), length=lengths)
        selection = self.scheduler.select(table, len(table))
        fresh = np.asarray(selection.train_fresh, dtype=np.int64)
        missing = [int(i) for i in selection.train_reused if int(i) not in self.payloads]
        if missing:
            raise SchedulerError(f"the scheduler reused rollouts {missing[:8]} whose payloads were not kept")
        reused = [self.payloads[int(i)] for i in selection.train_reused]
        fresh_t = torch.as_tensor(fresh, dtype=torch.long, device=device)
        adv_all = torch.as_tensor(advantages, dtype=torch.float32, device=device)
        batch_rows, batch_completions, batch_adv = prompt_rows[fresh_t], completions[fresh_t], adv_all[fresh_t]
        old_reused = None
        if reused:
            batch_rows = torch.cat([batch_rows, torch.as_tensor([p.prompt_row for p in reused], device=device)])
            batch_completions = torch.cat([batch_completions, torch.stack([p.completion for p in reused]).to(device)])
            batch_adv = torch.cat([batch_adv, torch.as_tensor([p.advantage for p in reused], dtype=torch.float32,
                                                               device=device)])
            old_reused = torch.stack([p.old_logp for p in reused]).to(device)
        # Fresh rollouts the buffer keeps without training them now: their drawing policy's
        # log-probs are the current policy's, so take them before the update changes it.
        fresh_pos = {int(fid): row for row, fid in enumerate(selection.fresh_ids)}
        trained_pos = {int(row): k for k, row in enumerate(fresh)}
        kept_untrained = [fresh_pos[int(i)] for i in selection.kept
                          if int(i) in fresh_pos and fresh_pos[int(i)] not in trained_pos]
        kept_logp = {}
        if kept_untrained:
            idx = torch.as_tensor(kept_untrained, dtype=torch.long, device=device)
            with torch.no_grad():
                logp_kept, _ = completion_logprobs(model, train.tokens[prompt_rows[idx]], train.mask[prompt_rows[idx]],
                                                   completions[idx])
            kept_logp = {row: logp_kept[k] for k, row in enumerate(kept_untrained)}
        scheduler_seconds = time.perf_counter() - started

        loss, logp_before, counted = clipped_update(model, opt, train, batch_rows, batch_completions, batch_adv,
                                                    old_reused, grad_clip)

        gain_start = time.perf_counter()
        with torch.no_grad():
            logp_after, _ = completion_logprobs(model, train.tokens[batch_rows], train.mask[batch_rows],
                                                batch_completions)
        gains = (batch_adv.double() * token_mean((logp_after - logp_before).double(), counted)).cpu().numpy()
        gain_seconds = time.perf_counter() - gain_start
        clipped_share = 0.0
        if old_reused is not None:
            ratio = torch.exp(logp_before[len(fresh):] - old_reused)
            mask = counted[len(fresh):]
            outside = ((ratio < 1 - CLIP_EPS) | (ratio > 1 + CLIP_EPS)) & mask
            clipped_share = float(outside.sum() / mask.sum().clamp(min=1))

        started = time.perf_counter()
        self.scheduler.feedback(selection.trained_ids(), gains)
        buffer: dict[int, Payload] = {}
        for rid in (int(i) for i in selection.kept):
            if rid in fresh_pos:
                row = fresh_pos[rid]
                logp = logp_before[trained_pos[row]] if row in trained_pos else kept_logp[row]
                buffer[rid] = Payload(int(prompt_rows[row]), completions[row].clone(), logp.clone(),
                                      float(advantages[row]))
            elif rid in self.payloads:
                buffer[rid] = self.payloads[rid]
            else:
                raise SchedulerError(f"the scheduler keeps rollout {rid}, which it neither drew now nor kept before")
        self.payloads = buffer
        scheduler_seconds += time.perf_counter() - started
        figures = {f"scheduler_{k}": float(v) for k, v in self.scheduler.metrics().items()}
        figures.update({
            "trained_fresh": int(len(fresh)), "trained_reused": int(len(reused)), "buffered": len(buffer),
            "reused_clipped_token_share": round(clipped_share, 5), "mean_gain": float(np.mean(gains)) if gains.size else 0.0,
            "scheduler_seconds": round(scheduler_seconds, 5), "gain_seconds": round(gain_seconds, 5),
        })
        return loss, figures
