"""The policy: a pre-LN decoder-only transformer, its sampler and its log-probabilities.

Positions are counted from each row's first real token so that left padding (prompts of
different lengths in one batch) changes nothing; PAD and BOS are removed from the policy in
sampling and training alike, so a completion is digits and EOS only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.small_model.task import ANSWER_WIDTH, BOS, EOS, PAD, PROMPT_WIDTH, VOCAB, PromptSet, score


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
        return self.cached(x, attn_mask, None)[0]

    def cached(
        self, x: torch.Tensor, attn_mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block on new positions ``x``, attending to ``past`` keys and values as well; returns
        the output and the keys and values so far (the cache that makes sampling cheap)."""
        b, length, width = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.qkv(self.norm1(x)).view(b, length, 3, self.heads, width // self.heads).unbind(2))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x)), (k, v)


_NEVER_GENERATED = torch.zeros(VOCAB, dtype=torch.bool)
_NEVER_GENERATED[[PAD, BOS]] = True


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
        return self.cached(tokens, valid, None)[0]

    def cached(
        self, tokens: torch.Tensor, valid: torch.Tensor, past: list | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits of the last ``tokens.shape[1]`` positions given ``past`` (None: no cache).

        ``valid`` covers every position so far (past and new), as in :meth:`forward`; with a
        cache, the new positions are the last columns. Same result as the full forward."""
        if past is None:
            return self._full(tokens, valid)
        total, new = valid.shape[1], tokens.shape[1]
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)[:, total - new:]
        causal = torch.ones(new, total, dtype=torch.bool, device=tokens.device).tril(total - new)
        mask = causal & valid[:, None, None, :]
        own = torch.zeros(new, total, dtype=torch.bool, device=tokens.device)
        own[torch.arange(new), torch.arange(total - new, total)] = True
        mask = mask | own
        x = self.embed(tokens) + self.position(positions)
        present = []
        for block, kv in zip(self.blocks, past):
            x, kv = block.cached(x, mask, kv)
            present.append(kv)
        logits = self.head(self.norm(x))
        return logits.masked_fill(_NEVER_GENERATED.to(logits.device), float("-inf")), present

    def _full(self, tokens: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, list]:
        length = tokens.shape[1]
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # Padding keys are hidden; every query sees itself, so padded rows stay finite.
        mask = causal & valid[:, None, None, :]
        mask = mask | torch.eye(length, dtype=torch.bool, device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        present = []
        for block in self.blocks:
            x, kv = block.cached(x, mask, None)
            present.append(kv)
        logits = self.head(self.norm(x))
        return logits.masked_fill(_NEVER_GENERATED.to(logits.device), float("-inf")), present


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
    """Completions [B, ANSWER_WIDTH]: sampled tokens up to EOS, PAD after it.

    Keys and values are cached, so each new token costs one position, not the whole sequence."""
    valid = prompt_mask
    done = torch.zeros(prompt_tokens.shape[0], dtype=torch.bool, device=prompt_tokens.device)
    out = []
    logits_all, cache = model.cached(prompt_tokens, valid, None)
    for i in range(ANSWER_WIDTH):
        if i:
            logits_all, cache = model.cached(nxt[:, None], valid, cache)
        logits = logits_all[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
        nxt = nxt.masked_fill(done, PAD)
        out.append(nxt)
        valid = torch.cat([valid, ~done[:, None]], 1)
        done = done | (nxt == EOS)
    return torch.stack(out, 1)


def sample_in_chunks(
    model: TinyDecoder, data: PromptSet, index: torch.Tensor, *, greedy: bool,
    generator: torch.Generator | None = None, chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions and exact rewards for rows ``index`` of ``data``, in chunks that fit memory."""
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
    """Share of ``data`` answered exactly by greedy decoding: the evaluation metric."""
    model.eval()
    index = torch.arange(len(data.texts), device=data.tokens.device)
    _, rewards = sample_in_chunks(model, data, index, greedy=True)
    model.train()
    return float(rewards.mean())


@torch.no_grad()
def pass_rates(model: TinyDecoder, data: PromptSet, samples: int, generator: torch.Generator) -> np.ndarray:
    """Per-prompt sampled pass rate over ``samples`` draws at temperature 1 (the policy's own)."""
    model.eval()
    index = torch.arange(len(data.texts), device=data.tokens.device).repeat_interleave(samples)
    _, rewards = sample_in_chunks(model, data, index, greedy=False, generator=generator)
    model.train()
    return rewards.view(-1, samples).mean(1).cpu().numpy()


def completion_logprobs(
    model: TinyDecoder, prompt_tokens: torch.Tensor, prompt_mask: torch.Tensor, completions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each completion token [B, ANSWER_WIDTH] and which tokens count
    (up to and including EOS)."""
    tokens = torch.cat([prompt_tokens, completions], 1)
    counted = completions != PAD
    valid = torch.cat([prompt_mask, counted], 1)
    logits = model(tokens, valid)[:, PROMPT_WIDTH - 1 : -1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, completions[..., None]).squeeze(-1)
    return logp.masked_fill(~counted, 0.0), counted
