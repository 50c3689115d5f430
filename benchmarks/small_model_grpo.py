"""A real GRPO experiment with the rollout allocators: a small transformer on arithmetic.

The simulator (docs/simulator.md) models how pass rates move; this script trains a real
policy instead, so that "fewer rollouts to the same accuracy" is measured on a model whose
pass rates move by gradient descent. Only torch, numpy and our allocators package are used
(no OpenRLHF, vLLM or Ray): it runs on one GPU, and on CPU with a tiny setting.

    PYTHONPATH=. python3 benchmarks/small_model_grpo.py --out OUT [--allocators uniform,cero,vip,pilot_commit]
        [--seeds 0,1,2] [--jobs 12] [--total-rollouts 204800] ...
    PYTHONPATH=. python benchmarks/small_model_grpo.py --smoke --out /tmp/small_model_grpo_smoke    # CPU, a minute
    PYTHONPATH=. python benchmarks/small_model_grpo.py --report OUT/results.json [--plot docs/figures/small_model_]

What happens:

1. Task: ``a+b=`` and ``a*b=`` with operands of 1-4 digits (multiplication up to 3x1 and
   2x2 digits); the answer is written least-significant digit first (a tiny decoder can learn
   carries that way) and checked exactly. The operand sizes give the difficulty spread.
2. Warm-up: supervised teacher forcing on fresh random problems (never a held-out one)
   until the sampled pass rate on a probe of training prompts reaches ``--warmup-target``,
   so RL starts like RLVR does: some prompts solved, many half-solved, some never.
3. GRPO from that one checkpoint for every allocator and seed: each step draws rollouts
   through :func:`openrlhf_cero.allocators.step_loop.run_step` (the loop OpenRLHF runs),
   ``draw`` samples from the current policy in one batch and scores exactly; advantages are
   group_norm per group of its own size (OpenRLHF's formula: unbiased std, eps 1e-9); loss is
   the token-mean policy gradient, one optimizer step per rollout batch (on-policy, so PPO's
   ratio is 1 and clipping is inactive), no KL, no critic.
4. Held-out and train greedy accuracy against cumulative rollouts drawn (skipped pilots
   included), every ``--eval-every`` rollouts; one JSON holds every run, rewritten as
   runs progress so a killed command still leaves its results.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from openrlhf_cero.allocators import create_allocator
from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.allocators.ids import prompt_id
from openrlhf_cero.allocators.step_loop import run_step

# ── task ────────────────────────────────────────────────────────────────────────────────

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+*="
VOCAB = 3 + len(CHARS)
TOKEN_OF = {c: i + 3 for i, c in enumerate(CHARS)}
CHAR_OF = {i + 3: c for i, c in enumerate(CHARS)}
# (operator, digits of a, digits of b): the difficulty buckets, drawn uniformly.
BUCKETS = [("+", a, b) for a in range(1, 5) for b in range(1, 5)] + [
    ("*", 1, 1), ("*", 1, 2), ("*", 2, 1), ("*", 2, 2), ("*", 3, 1), ("*", 1, 3)
]
PROMPT_WIDTH = 1 + 4 + 1 + 4 + 1  # BOS, 4 digits, operator, 4 digits, '='
ANSWER_WIDTH = 5 + 1  # 9999+9999 = 19998 has 5 digits, then EOS


def expected_answer(prompt: str) -> str:
    """The exact answer of ``prompt`` ("12+345="), least-significant digit first."""
    body = prompt.rstrip("=")
    op = "+" if "+" in body else "*"
    a, b = (int(x) for x in body.split(op))
    return str(a + b if op == "+" else a * b)[::-1]


def check_answer(prompt: str, completion: str) -> bool:
    """Exact match; ``completion`` is the text before EOS (None of it may be missing or extra)."""
    return completion == expected_answer(prompt)


def random_problem(rng: np.random.Generator) -> str:
    op, da, db = BUCKETS[rng.integers(len(BUCKETS))]

    def number(digits: int) -> int:
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return int(rng.integers(low, 10**digits))

    return f"{number(da)}{op}{number(db)}="


def encode_prompts(prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt tokens [N, PROMPT_WIDTH] (BOS first) and their validity mask."""
    tokens = torch.full((len(prompts), PROMPT_WIDTH), PAD, dtype=torch.long)
    for row, text in enumerate(prompts):
        ids = [BOS] + [TOKEN_OF[c] for c in text]
        tokens[row, PROMPT_WIDTH - len(ids):] = torch.tensor(ids)
    return tokens, tokens != PAD


def encode_answers(prompts: Sequence[str]) -> torch.Tensor:
    """Target completions [N, ANSWER_WIDTH]: answer digits, EOS, then PAD."""
    targets = torch.full((len(prompts), ANSWER_WIDTH), PAD, dtype=torch.long)
    for row, text in enumerate(prompts):
        ids = [TOKEN_OF[c] for c in expected_answer(text)] + [EOS]
        targets[row, : len(ids)] = torch.tensor(ids)
    return targets


def decode_completion(tokens: Sequence[int]) -> str:
    """Text before the first EOS; a completion that never ends gets a trailing '?' (never correct)."""
    out = []
    for t in tokens:
        if t == EOS:
            return "".join(out)
        out.append(CHAR_OF.get(int(t), "?"))
    return "".join(out) + "?"


@dataclass
class PromptSet:
    texts: list[str]
    tokens: torch.Tensor  # [N, PROMPT_WIDTH]
    mask: torch.Tensor
    targets: torch.Tensor  # [N, ANSWER_WIDTH]
    ids: np.ndarray  # stable allocator ids
    buckets: np.ndarray  # index into BUCKETS

    def to(self, device: torch.device) -> "PromptSet":
        return replace(self, tokens=self.tokens.to(device), mask=self.mask.to(device), targets=self.targets.to(device))


def bucket_of(prompt: str) -> int:
    body = prompt.rstrip("=")
    op = "+" if "+" in body else "*"
    a, b = body.split(op)
    return BUCKETS.index((op, len(a), len(b)))


def make_prompt_set(texts: list[str]) -> PromptSet:
    tokens, mask = encode_prompts(texts)
    return PromptSet(
        texts=texts,
        tokens=tokens,
        mask=mask,
        targets=encode_answers(texts),
        ids=np.array([prompt_id(t, expected_answer(t)) for t in texts], dtype=np.uint64),
        buckets=np.array([bucket_of(t) for t in texts], dtype=np.int64),
    )


def build_datasets(seed: int, train_size: int, eval_size: int) -> tuple[PromptSet, PromptSet]:
    """Disjoint train and held-out sets of distinct prompts, the same for every run."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < train_size + eval_size:
        seen.setdefault(random_problem(rng))
    texts = list(seen)
    return make_prompt_set(texts[:train_size]), make_prompt_set(texts[train_size:])


# ── model ───────────────────────────────────────────────────────────────────────────────


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """Pre-LN decoder-only transformer with learned positions counted from each row's first
    real token, so left padding does not shift positions."""

    def __init__(self, width: int = 256, layers: int = 4, heads: int = 8, max_len: int = PROMPT_WIDTH + ANSWER_WIDTH):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # Padding keys are hidden; every query sees itself, so padded rows stay finite.
        mask = causal & valid[:, None, None, :]
        mask = mask | torch.eye(length, dtype=torch.bool, device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.norm(x))
        # PAD and BOS are never generated: removed from the policy in sampling and training alike.
        return logits.masked_fill(_NEVER_GENERATED.to(logits.device), float("-inf"))


_NEVER_GENERATED = torch.zeros(VOCAB, dtype=torch.bool)
_NEVER_GENERATED[[PAD, BOS]] = True


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ── sampling and scoring ──────────────────────────────────────────────────────────────


@torch.no_grad()
def generate(
    model: TinyDecoder,
    prompt_tokens: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    greedy: bool,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Completions [B, ANSWER_WIDTH]: sampled tokens up to EOS, PAD after it."""
    tokens, valid = prompt_tokens, prompt_mask
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    out = []
    for _ in range(ANSWER_WIDTH):
        logits = model(tokens, valid)[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(done, PAD)
        out.append(nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        valid = torch.cat([valid, ~done[:, None]], 1)
        done = done | (nxt == EOS)
    return torch.stack(out, 1)


def score(completions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where the completion is exactly the answer followed by EOS (vectorised check_answer)."""
    return (completions == targets).all(1).float()


def sample_in_chunks(
    model: TinyDecoder, data: PromptSet, index: torch.Tensor, *, greedy: bool, generator=None, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    outs, rewards = [], []
    for start in range(0, index.numel(), chunk):
        rows = index[start : start + chunk]
        completions = generate(model, data.tokens[rows], data.mask[rows], greedy=greedy, generator=generator)
        outs.append(completions)
        rewards.append(score(completions, data.targets[rows]))
    if not outs:
        empty = torch.zeros(0, ANSWER_WIDTH, dtype=torch.long, device=data.tokens.device)
        return empty, torch.zeros(0, device=data.tokens.device)
    return torch.cat(outs), torch.cat(rewards)


@torch.no_grad()
def greedy_accuracy(model: TinyDecoder, data: PromptSet) -> float:
    model.eval()
    index = torch.arange(len(data.texts), device=data.tokens.device)
    _, rewards = sample_in_chunks(model, data, index, greedy=True)
    model.train()
    return float(rewards.mean())


@torch.no_grad()
def pass_rates(model: TinyDecoder, data: PromptSet, samples: int, generator: torch.Generator) -> np.ndarray:
    """Per-prompt sampled pass rate over ``samples`` draws."""
    model.eval()
    index = torch.arange(len(data.texts), device=data.tokens.device).repeat_interleave(samples)
    _, rewards = sample_in_chunks(model, data, index, greedy=False, generator=generator)
    model.train()
    return rewards.view(-1, samples).mean(1).cpu().numpy()


# ── losses ──────────────────────────────────────────────────────────────────────────────


def completion_logprobs(model: TinyDecoder, prompt_tokens, prompt_mask, completions) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each completion token [B, ANSWER_WIDTH] and which tokens count
    (up to and including EOS)."""
    tokens = torch.cat([prompt_tokens, completions], 1)
    counted = completions != PAD
    valid = torch.cat([prompt_mask, counted], 1)
    logits = model(tokens, valid)[:, PROMPT_WIDTH - 1 : -1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, completions[..., None]).squeeze(-1)
    return logp.masked_fill(~counted, 0.0), counted


def group_norm_advantages(rewards: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """OpenRLHF's group_norm, (r - group mean) / (unbiased group std + 1e-9), for groups of
    any size laid out one after another; groups of one get 0 (no baseline exists)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.sum() != rewards.size:
        raise ValueError(f"group sizes sum to {sizes.sum()} but there are {rewards.size} rewards")
    if not rewards.size:
        return rewards
    starts = np.cumsum(sizes) - sizes
    nonempty = sizes > 0
    sums = np.add.reduceat(rewards, starts[nonempty])
    means = np.repeat(sums / sizes[nonempty], sizes[nonempty])
    squares = np.add.reduceat((rewards - means) ** 2, starts[nonempty])
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(squares / (sizes[nonempty] - 1))
    std = np.repeat(std, sizes[nonempty])
    single = np.repeat(sizes[nonempty] == 1, sizes[nonempty])
    return np.where(single, 0.0, (rewards - means) / (np.where(single, 1.0, std) + 1e-9))


def policy_gradient_loss(logp: torch.Tensor, counted: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Token-mean REINFORCE with the sequence's advantage on each of its tokens."""
    return -(advantages[:, None] * logp).sum() / counted.sum().clamp(min=1)


# ── warm-up ─────────────────────────────────────────────────────────────────────────────


@dataclass
class Config:
    width: int = 256
    layers: int = 4
    heads: int = 8
    data_seed: int = 0
    train_size: int = 3000
    eval_size: int = 2000
    warmup_lr: float = 1e-3
    warmup_batch: int = 256
    warmup_target: float = 0.4  # mean sampled pass rate on the probe at which warm-up stops
    warmup_max_steps: int = 20000
    warmup_check_every: int = 100
    warmup_max_seconds: float = 150.0
    probe_size: int = 512
    batch_prompts: int = 64
    n: int = 8
    min_samples: int = 2
    max_samples: int = 32
    lr: float = 1e-4
    grad_clip: float = 1.0
    total_rollouts: int = 204800
    eval_every: int = 5120
    deadline: float = 0.0  # wall-clock time (time.time()) at which runs stop and keep what they have
    allocator_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cuda"


def build_model(cfg: Config, device: torch.device) -> TinyDecoder:
    return TinyDecoder(cfg.width, cfg.layers, cfg.heads).to(device)


def teacher_forcing_batch(rng: np.random.Generator, size: int, excluded: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < size:
        text = random_problem(rng)
        if text not in excluded:
            out.append(text)
    return out


def warm_up(cfg: Config, train: PromptSet, held_out: PromptSet, device: torch.device, log=print) -> tuple[dict, dict]:
    """Supervised warm-up until the probe's mean sampled pass rate reaches the target."""
    torch.manual_seed(cfg.data_seed)
    rng = np.random.default_rng(cfg.data_seed + 1)
    generator = torch.Generator(device).manual_seed(cfg.data_seed)
    model = build_model(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warmup_lr, betas=(0.9, 0.98), weight_decay=0.0)
    excluded = set(held_out.texts)
    probe = _subset(train, np.arange(min(cfg.probe_size, len(train.texts))))
    start, steps, probe_rate, history = time.time(), 0, 0.0, []
    while steps < cfg.warmup_max_steps and time.time() - start < cfg.warmup_max_seconds:
        batch = make_prompt_set(teacher_forcing_batch(rng, cfg.warmup_batch, excluded)).to(device)
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
    rates = pass_rates(model, train, 16, generator)
    info = {
        "steps": steps,
        "seconds": time.time() - start,
        "probe_pass_rate": probe_rate,
        "history": history,
        "parameters": parameter_count(model),
        "train_pass_rate_n16": describe_pass_rates(rates, train.buckets),
        "held_out_greedy": greedy_accuracy(model, held_out),
        "train_greedy": greedy_accuracy(model, train),
    }
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, info


def describe_pass_rates(rates: np.ndarray, buckets: np.ndarray) -> dict[str, Any]:
    """How the starting pass rates spread: the share of prompts that cannot give a gradient."""
    by_bucket = {
        "".join(map(str, BUCKETS[b])): round(float(rates[buckets == b].mean()), 3) for b in np.unique(buckets)
    }
    return {
        "mean": float(rates.mean()),
        "share_zero": float((rates == 0).mean()),
        "share_one": float((rates == 1).mean()),
        "share_between": float(((rates > 0) & (rates < 1)).mean()),
        "histogram_tenths": np.histogram(rates, bins=10, range=(0, 1))[0].tolist(),
        "by_bucket": by_bucket,
    }


def _subset(data: PromptSet, index: np.ndarray) -> PromptSet:
    t = torch.as_tensor(index, dtype=torch.long)
    return PromptSet(
        texts=[data.texts[i] for i in index],
        tokens=data.tokens[t.to(data.tokens.device)],
        mask=data.mask[t.to(data.mask.device)],
        targets=data.targets[t.to(data.targets.device)],
        ids=data.ids[index],
        buckets=data.buckets[index],
    )


# ── GRPO with an allocator ────────────────────────────────────────────────────────────


class EpochStream:
    """The dataloader: the train set shuffled each epoch, epochs back to back."""

    def __init__(self, size: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.order = self.rng.permutation(size)
        self.position = 0
        self.epoch = 0

    def take(self, k: int) -> np.ndarray:
        taken = []
        while k > 0:
            if self.position == self.size:
                self.order, self.position, self.epoch = self.rng.permutation(self.size), 0, self.epoch + 1
            chunk = self.order[self.position : self.position + k]
            self.position += chunk.size
            k -= chunk.size
            taken.append(chunk)
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)


class RolloutDrawer:
    """``draw`` for run_step: every requested rollout of a round sampled in one batch.

    A sample is its row number in this step's buffer; the completions stay on the device
    until the update gathers the kept rows."""

    def __init__(self, model: TinyDecoder, train: PromptSet, generator: torch.Generator) -> None:
        self.model, self.train, self.generator = model, train, generator
        self.prompt_rows: list[torch.Tensor] = []
        self.completions: list[torch.Tensor] = []
        self.rows = 0
        self.seconds = 0.0

    def __call__(self, handles: Sequence[int], counts: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        start = time.perf_counter()
        counts = np.asarray(counts, dtype=np.int64)
        index = torch.as_tensor(np.repeat(np.asarray(handles, dtype=np.int64), counts), device=self.train.tokens.device)
        self.model.eval()
        completions, rewards = sample_in_chunks(self.model, self.train, index, greedy=False, generator=self.generator)
        self.model.train()
        self.prompt_rows.append(index)
        self.completions.append(completions)
        rewards_np = rewards.cpu().numpy().astype(np.float64)
        rows = np.arange(self.rows, self.rows + index.numel())
        self.rows += index.numel()
        edges = np.cumsum(counts)[:-1]
        out = [(r.tolist(), w) for r, w in zip(np.split(rows, edges), np.split(rewards_np, edges))]
        self.seconds += time.perf_counter() - start
        return out

    def gather(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_rows = torch.cat(self.prompt_rows)
        completions = torch.cat(self.completions)
        picked = torch.as_tensor(rows, dtype=torch.long, device=completions.device)
        return prompt_rows[picked], completions[picked]


def grpo_update(model, opt, train: PromptSet, drawer: RolloutDrawer, groups, grad_clip: float) -> float:
    rows = np.concatenate([np.asarray(g.samples, dtype=np.int64) for g in groups])
    rewards = np.concatenate([g.rewards for g in groups])
    sizes = np.array([len(g.samples) for g in groups], dtype=np.int64)
    advantages = torch.as_tensor(group_norm_advantages(rewards, sizes), dtype=torch.float32, device=train.tokens.device)
    prompt_rows, completions = drawer.gather(rows)
    logp, counted = completion_logprobs(model, train.tokens[prompt_rows], train.mask[prompt_rows], completions)
    loss = policy_gradient_loss(logp, counted, advantages)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(loss.detach())


def run_allocator(cfg: Config, name: str, seed: int, state: dict, progress_path: Path | None = None) -> dict:
    """GRPO from the warm-up checkpoint until ``total_rollouts`` rollouts are drawn."""
    device = torch.device(cfg.device)
    train, held_out = (s.to(device) for s in build_datasets(cfg.data_seed, cfg.train_size, cfg.eval_size))
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    model = build_model(cfg, device)
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    allocator = create_allocator(
        name,
        n_samples_per_prompt=cfg.n,
        min_samples=cfg.min_samples,
        max_samples=cfg.max_samples,
        seed=seed,
        advantage_estimator="group_norm",
        **cfg.allocator_options.get(name, {}),
    )
    stream = EpochStream(len(train.texts), seed)
    observe = getattr(allocator, "observe_prompts", None)

    def take_prompts(k: int) -> tuple[np.ndarray, list[int]]:
        index = stream.take(k)
        if observe is not None:
            observe(train.ids[index], [train.texts[i] for i in index])
        return train.ids[index], index.tolist()

    record: dict[str, Any] = {"allocator": name, "seed": seed, "evals": [], "steps": [], "done": False}
    start = time.time()

    def evaluate(cum: int, step: int) -> None:
        record["evals"].append(
            {"rollouts": cum, "step": step, "seconds": time.time() - start,
             "held_out": greedy_accuracy(model, held_out), "train": greedy_accuracy(model, train)}
        )
        record["wall_seconds"] = time.time() - start
        if progress_path is not None:
            _write_json(progress_path, record)

    cum, step, next_eval = 0, 0, cfg.eval_every
    evaluate(0, 0)
    while cum < cfg.total_rollouts:
        if cfg.deadline and time.time() > cfg.deadline:
            record["stopped_by_deadline"] = True
            break
        step_start = time.perf_counter()
        drawer = RolloutDrawer(model, train, generator)
        try:
            outcome = run_step(allocator, cfg.n * cfg.batch_prompts, take_prompts, drawer)
        except AllocatorError as exc:  # e.g. Pilot-Commit finds no prompt in its band: the run ends here
            record["error"] = str(exc)
            break
        update_start = time.perf_counter()
        loss = grpo_update(model, opt, train, drawer, outcome.groups, cfg.grad_clip) if outcome.groups else 0.0
        update_seconds = time.perf_counter() - update_start
        step += 1
        cum += outcome.rollouts_drawn
        sizes = np.array([len(g.samples) for g in outcome.groups])
        wins = np.array([g.rewards.sum() for g in outcome.groups])
        mixed = (wins > 0) & (wins < sizes)
        metrics = allocator.metrics()
        record["steps"].append({
            "rollouts": cum,
            "drawn": outcome.rollouts_drawn,
            "trained": int(sizes.sum()),
            "groups": int(sizes.size),
            "mixed_groups": int(mixed.sum()),
            "mixed_rollouts": int(sizes[mixed].sum()) if sizes.size else 0,
            "zero_variance_share": float(1 - mixed.mean()) if sizes.size else 0.0,
            "allocator_zero_variance_share": metrics.get("zero_variance_share"),
            "cycles": outcome.cycles,
            "mean_reward": float(np.concatenate([g.rewards for g in outcome.groups]).mean()) if sizes.size else 0.0,
            "loss": loss,
            "draw_seconds": drawer.seconds,
            "update_seconds": update_seconds,
            "allocator_seconds": update_start - step_start - drawer.seconds,
            "epoch": stream.epoch,
        })
        if outcome.rollouts_drawn == 0:
            break
        if cum >= next_eval or cum >= cfg.total_rollouts:
            evaluate(cum, step)
            next_eval = (cum // cfg.eval_every + 1) * cfg.eval_every
    record["done"] = not (record.get("stopped_by_deadline") or record.get("error"))
    record["wall_seconds"] = time.time() - start
    if progress_path is not None:
        _write_json(progress_path, record)
    return record


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


# ── orchestration ───────────────────────────────────────────────────────────────────────


def _worker(cfg_dict: dict, name: str, seed: int, state_path: str, progress_path: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = Config(**cfg_dict)
    state = torch.load(state_path, map_location="cpu")
    return run_allocator(cfg, name, seed, state, Path(progress_path))


def run_all(
    cfg: Config, allocators: list[str], seeds: list[int], out: Path, jobs: int, log=print, checkpoint: Path | None = None
) -> dict:
    """Warm up (or load ``checkpoint``), then GRPO for every allocator and seed; no allocators: warm-up only."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("GPU_GRPO_WORK", "/tmp/small_model_grpo_work"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    train, held_out = (s.to(device) for s in build_datasets(cfg.data_seed, cfg.train_size, cfg.eval_size))
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu")
        state, warm = saved["state"], json.loads(saved["info"])
        log(f"warm-up checkpoint loaded from {checkpoint}")
    else:
        state, warm = warm_up(cfg, train, held_out, device, log)
        if checkpoint is not None:
            torch.save({"state": state, "info": json.dumps(warm)}, checkpoint)
    log(f"warm-up: {json.dumps({k: v for k, v in warm.items() if k != 'history'})}")
    if not allocators:
        return {"config": asdict(cfg), "device": _device_name(device), "warmup": warm, "runs": {}}
    state_path = work / "warmup.pt"
    torch.save(state, state_path)
    results: dict[str, Any] = {"config": asdict(cfg), "device": _device_name(device), "warmup": warm, "runs": {}}
    results_path = out / "results.json"
    _write_json(results_path, results)
    tasks = [(name, seed) for seed in seeds for name in allocators]
    progress = {t: work / f"run_{t[0]}_{t[1]}.json" for t in tasks}
    for p in progress.values():
        p.unlink(missing_ok=True)

    def collect() -> None:
        for (name, seed), p in progress.items():
            if p.exists():
                results["runs"][f"{name}/{seed}"] = json.loads(p.read_text())
        _write_json(results_path, results)

    if jobs <= 1:
        for name, seed in tasks:
            log(f"run {name} seed {seed}")
            results["runs"][f"{name}/{seed}"] = run_allocator(cfg, name, seed, state, progress[(name, seed)])
            _write_json(results_path, results)
            log(run_line(results["runs"][f"{name}/{seed}"]))
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(_worker, asdict(cfg), name, seed, str(state_path), str(progress[(name, seed)]), torch.get_num_threads()): (name, seed)
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
            _write_json(results_path, results)
    return results


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def run_line(run: dict) -> str:
    last = run["evals"][-1]
    zero = np.mean([s["zero_variance_share"] for s in run["steps"]]) if run["steps"] else float("nan")
    return (
        f"{run['allocator']:>12} seed {run['seed']}: {last['rollouts']:>8} rollouts, {len(run['steps'])} steps, "
        f"held-out {last['held_out']:.3f}, train {last['train']:.3f}, zero-variance {zero:.3f}, "
        f"{run['wall_seconds']:.0f} s"
    )


# ── summary ─────────────────────────────────────────────────────────────────────────────


def curve(run: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([e["rollouts"] for e in run["evals"]], dtype=float),
            np.array([e[metric] for e in run["evals"]], dtype=float))


def rollouts_to_target(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Rollouts at which the curve first reaches ``target`` (linear between evaluations); nan if never."""
    above = np.flatnonzero(y >= target)
    if not above.size:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))


def value_at(x: np.ndarray, y: np.ndarray, at: float) -> float:
    return float(np.interp(at, x, y)) if x.size and at <= x[-1] else float("nan")


def summarise(results: dict, metric: str = "train", gain_share: float = 0.8) -> dict:
    """Per allocator: rollouts to a target taken from uniform's curve, speed-up per seed, accuracy
    at equal rollouts, wall time, zero-variance share."""
    runs = [r for r in results["runs"].values() if "evals" in r and r["evals"]]
    uniform = [r for r in runs if r["allocator"] == "uniform"]
    if not uniform:
        return {}
    start = float(np.mean([r["evals"][0][metric] for r in uniform]))
    equal_at = float(min(r["evals"][-1]["rollouts"] for r in runs))
    uniform_final = float(np.mean([value_at(*curve(r, metric), equal_at) for r in uniform]))
    target = start + gain_share * (uniform_final - start)
    uniform_cost = {r["seed"]: rollouts_to_target(*curve(r, metric), target) for r in uniform}
    table: dict[str, Any] = {}
    for name in dict.fromkeys(r["allocator"] for r in runs):
        mine = [r for r in runs if r["allocator"] == name]
        cost = [rollouts_to_target(*curve(r, metric), target) for r in mine]
        speed = [_ratio(uniform_cost.get(r["seed"], float("nan")), c) for r, c in zip(mine, cost)]
        table[name] = {
            "seeds": [r["seed"] for r in mine],
            "rollouts_to_target": cost,
            "speedup": speed,
            "held_out_at_equal": [value_at(*curve(r, "held_out"), equal_at) for r in mine],
            "train_at_equal": [value_at(*curve(r, "train"), equal_at) for r in mine],
            "wall_seconds": [r.get("wall_seconds", float("nan")) for r in mine],
            "zero_variance_share": [float(np.mean([s["zero_variance_share"] for s in r["steps"]])) for r in mine],
            "effective_ratio": [
                sum(s["mixed_rollouts"] for s in r["steps"]) / max(1, sum(s["drawn"] for s in r["steps"])) for r in mine
            ],
            "allocator_ms_per_step": [1000 * float(np.mean([s["allocator_seconds"] for s in r["steps"]])) for r in mine],
            "steps": [len(r["steps"]) for r in mine],
        }
    return {"metric": metric, "start": start, "uniform_final": uniform_final, "target": target,
            "gain_share": gain_share, "equal_rollouts": equal_at, "allocators": table}


def merge_results(parts: list[dict]) -> dict:
    """One results dict from runs of the same settings (e.g. seeds run in separate commands)."""
    first = parts[0]
    for other in parts[1:]:
        differ = {k for k in first["config"] if k != "deadline" and first["config"][k] != other["config"].get(k)}
        if differ:
            raise SystemExit(f"cannot merge results of different settings: {sorted(differ)}")
        clash = set(first["runs"]) & set(other["runs"])
        if clash:
            raise SystemExit(f"runs present twice: {sorted(clash)}")
    merged = dict(first)
    merged["runs"] = {k: v for part in parts for k, v in part["runs"].items()}
    return merged


def _ratio(baseline: float, cost: float) -> float:
    return baseline / cost if cost > 0 else float("nan")  # nan when either is nan or the target is the start


def _mean_sd(values: Sequence[float], fmt: str) -> str:
    v = np.asarray(values, dtype=float)
    missing = int(np.isnan(v).sum())
    v = v[~np.isnan(v)]
    if not v.size:
        return "not reached"
    text = format(v.mean(), fmt) + (f" ± {format(v.std(ddof=1), fmt)}" if v.size > 1 else "")
    return text + (f" ({missing} not reached)" if missing else "")


def markdown_table(summary: dict) -> str:
    lines = [
        f"Target: {summary['metric']} greedy accuracy {summary['target']:.3f} (start {summary['start']:.3f} + "
        f"{summary['gain_share']:.0%} of uniform's gain to {summary['uniform_final']:.3f} at "
        f"{summary['equal_rollouts']:,.0f} rollouts).",
        "",
        "| allocator | rollouts to target | speed-up vs uniform (x) | held-out acc. at equal rollouts | train acc. at equal rollouts "
        "| zero-variance share (trained groups) | effective-rollout ratio | allocator ms / step | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["allocators"].items():
        lines.append(
            f"| {name} | {_mean_sd(row['rollouts_to_target'], ',.0f')} | {_mean_sd(row['speedup'], '.2f')} "
            f"| {_mean_sd(row['held_out_at_equal'], '.3f')} | {_mean_sd(row['train_at_equal'], '.3f')} "
            f"| {_mean_sd(row['zero_variance_share'], '.3f')} | {_mean_sd(row['effective_ratio'], '.3f')} "
            f"| {_mean_sd(row['allocator_ms_per_step'], '.1f')} | {_mean_sd(row['wall_seconds'], '.0f')} |"
        )
    seeds = sorted({s for row in summary["allocators"].values() for s in row["seeds"]})
    lines += ["", f"Mean ± sample SD over seeds {', '.join(map(str, seeds))}."]
    return "\n".join(lines)


def plot(results: dict, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"].values() if "evals" in r and r["evals"]]
    names = list(dict.fromkeys(r["allocator"] for r in runs))
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    written = []
    for metric, title in (("held_out", "held-out"), ("train", "train")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in runs:
            x, y = curve(r, metric)
            ax.plot(x, y, color=colours[r["allocator"]], alpha=0.8, lw=1.2,
                    label=r["allocator"] if r["seed"] == min(q["seed"] for q in runs if q["allocator"] == r["allocator"]) else None)
        ax.set_xlabel("cumulative rollouts drawn")
        ax.set_ylabel(f"{title} greedy accuracy")
        ax.set_title(f"GRPO on arithmetic, {title} accuracy (one line per seed)")
        ax.grid(alpha=0.3)
        ax.legend()
        path = f"{prefix}{metric}_accuracy.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        x = np.array([s["rollouts"] for s in r["steps"]], dtype=float)
        y = np.array([s["zero_variance_share"] for s in r["steps"]], dtype=float)
        k = min(10, max(1, y.size))
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(x[k - 1:], smooth, color=colours[r["allocator"]], alpha=0.8, lw=1.2,
                label=r["allocator"] if r["seed"] == min(q["seed"] for q in runs if q["allocator"] == r["allocator"]) else None)
    ax.set_xlabel("cumulative rollouts drawn")
    ax.set_ylabel("zero-variance share of trained groups (10-step mean)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = f"{prefix}zero_variance.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


# ── command line ────────────────────────────────────────────────────────────────────────

SMOKE = dict(width=32, layers=1, heads=2, train_size=160, eval_size=80, warmup_batch=64, warmup_target=0.15,
             warmup_max_steps=300, warmup_check_every=50, probe_size=64, batch_prompts=8, n=4, max_samples=16,
             total_rollouts=96, eval_every=32, device="cpu")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for results.json and log.txt")
    parser.add_argument("--allocators", default="uniform,cero,vip,pilot_commit")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes sharing the device)")
    parser.add_argument("--time-limit", type=float, default=0.0, help="seconds from start after which runs stop")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU setting for debugging")
    parser.add_argument("--report", type=Path, nargs="+", help="summarise results.json files (same settings, "
                        "other seeds) instead of running")
    parser.add_argument("--plot", help="with --report: write PNG plots with this path prefix")
    parser.add_argument("--gain-share", type=float, default=0.8, help="target = start + this share of uniform's gain")
    parser.add_argument("--metric", choices=("train", "held_out"), default="train",
                        help="accuracy the target is set on (train: RLVR's own prompts, as in docs/benchmarks.md)")
    parser.add_argument("--checkpoint", type=Path, help="warm-up checkpoint: loaded if it exists, else written")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    for f in Config.__dataclass_fields__.values():
        if f.name in ("deadline", "allocator_options"):
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    parser.add_argument("--allocator-options", default="{}", help='JSON, e.g. {"cero": {"prompt_oversample": 2}}')
    args = parser.parse_args(argv)

    if args.report:
        results = merge_results([json.loads(path.read_text()) for path in args.report])
        summary = summarise(results, metric=args.metric, gain_share=args.gain_share)
        print(markdown_table(summary))
        if args.plot:
            print("\n".join(plot(results, args.plot)))
        return 0
    if args.out is None:
        parser.error("--out is required unless --report is given")

    settings = dict(SMOKE) if args.smoke else {}
    for f in Config.__dataclass_fields__:
        value = getattr(args, f, None)
        if value is not None and f not in ("deadline", "allocator_options"):
            settings[f] = value
    settings["allocator_options"] = json.loads(args.allocator_options)
    if args.time_limit:
        settings["deadline"] = time.time() + args.time_limit
    cfg = Config(**settings)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu (and --smoke for a quick check)", file=sys.stderr)
        return 2
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1" if args.jobs > 1 else str(os.cpu_count() or 1))
    log_path = args.out / "log.txt"
    args.out.mkdir(parents=True, exist_ok=True)

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
    _write_json(args.out / "results.json", results)
    summary = summarise(results, metric=args.metric, gain_share=args.gain_share)
    if summary:
        log(markdown_table(summary))
    log(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
