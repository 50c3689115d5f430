"""The task: ``a+b=`` and ``a*b=`` with exact answers, written least-significant digit first.

A tiny decoder can learn carries when the answer is reversed, and an exact-match reward is
a verifiable reward like RLVR's. The operand sizes (the *buckets*) give the difficulty spread;
a run may restrict the task to a subset of buckets (``Config.buckets``) so that most prompts
are neither always nor never solved after warm-up, which is where GRPO can learn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from openrlhf_cero.allocators.ids import prompt_id

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+*="
VOCAB = 3 + len(CHARS)
TOKEN_OF = {c: i + 3 for i, c in enumerate(CHARS)}
CHAR_OF = {i + 3: c for i, c in enumerate(CHARS)}
# (operator, digits of a, digits of b): the difficulty buckets.
BUCKETS: list[tuple[str, int, int]] = [("+", a, b) for a in range(1, 5) for b in range(1, 5)] + [
    ("*", 1, 1), ("*", 1, 2), ("*", 2, 1), ("*", 2, 2), ("*", 3, 1), ("*", 1, 3)
]
BUCKET_NAMES = ["".join(map(str, b)) for b in BUCKETS]  # "+22", "*13", ...
PROMPT_WIDTH = 1 + 4 + 1 + 4 + 1  # BOS, 4 digits, operator, 4 digits, '='
ANSWER_WIDTH = 5 + 1  # 9999+9999 = 19998 has 5 digits, then EOS


def bucket_indices(names: str | Sequence[str] | None) -> np.ndarray:
    """Indices into BUCKETS of a comma-separated list of bucket names ("" or None: all)."""
    if names is None or names == "" or names == []:
        return np.arange(len(BUCKETS))
    wanted = names.split(",") if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in BUCKET_NAMES]
    if unknown:
        raise ValueError(f"unknown buckets {unknown}; buckets are {', '.join(BUCKET_NAMES)}")
    return np.array([BUCKET_NAMES.index(n) for n in wanted], dtype=np.int64)


def expected_answer(prompt: str) -> str:
    """The exact answer of ``prompt`` ("12+345="), least-significant digit first."""
    body = prompt.rstrip("=")
    op = "+" if "+" in body else "*"
    a, b = (int(x) for x in body.split(op))
    return str(a + b if op == "+" else a * b)[::-1]


def check_answer(prompt: str, completion: str) -> bool:
    """Exact match; ``completion`` is the text before EOS (nothing may be missing or extra)."""
    return completion == expected_answer(prompt)


def random_problem(rng: np.random.Generator, buckets: np.ndarray | None = None) -> str:
    """One problem from a bucket drawn uniformly among ``buckets`` (default: all)."""
    choices = np.arange(len(BUCKETS)) if buckets is None else buckets
    op, da, db = BUCKETS[int(choices[rng.integers(len(choices))])]

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


def score(completions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where the completion is exactly the answer followed by EOS (vectorised check_answer)."""
    return (completions == targets).all(1).float()


def bucket_of(prompt: str) -> int:
    body = prompt.rstrip("=")
    op = "+" if "+" in body else "*"
    a, b = body.split(op)
    return BUCKETS.index((op, len(a), len(b)))


@dataclass
class PromptSet:
    """Prompts with everything a step needs on the device: tokens, targets, allocator ids."""

    texts: list[str]
    tokens: torch.Tensor  # [N, PROMPT_WIDTH]
    mask: torch.Tensor
    targets: torch.Tensor  # [N, ANSWER_WIDTH]
    ids: np.ndarray  # stable allocator ids
    buckets: np.ndarray  # index into BUCKETS

    def to(self, device: torch.device) -> "PromptSet":
        return replace(self, tokens=self.tokens.to(device), mask=self.mask.to(device), targets=self.targets.to(device))

    def subset(self, index: np.ndarray) -> "PromptSet":
        t = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        return PromptSet(
            texts=[self.texts[i] for i in index], tokens=self.tokens[t], mask=self.mask[t],
            targets=self.targets[t], ids=self.ids[index], buckets=self.buckets[index],
        )


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


def build_datasets(seed: int, train_size: int, eval_size: int, buckets: str = "") -> tuple[PromptSet, PromptSet]:
    """Disjoint train and held-out sets of distinct prompts, the same for every run."""
    rng = np.random.default_rng(seed)
    chosen = bucket_indices(buckets)
    seen: dict[str, None] = {}
    while len(seen) < train_size + eval_size:
        seen.setdefault(random_problem(rng, chosen))
    texts = list(seen)
    return make_prompt_set(texts[:train_size]), make_prompt_set(texts[train_size:])


def rl_rows(train_buckets: np.ndarray, rl_buckets: str = "", rl_train_size: int = 0) -> np.ndarray:
    """Rows of the training set that GRPO trains on: those in ``rl_buckets`` ("" = all), the
    first ``rl_train_size`` of them (0 = all)."""
    rows = np.flatnonzero(np.isin(train_buckets, bucket_indices(rl_buckets))) if rl_buckets else np.arange(train_buckets.size)
    return rows[:rl_train_size] if rl_train_size else rows


def rl_datasets(
    seed: int, train_size: int, eval_size: int, buckets: str = "", rl_buckets: str = "", rl_train_size: int = 0
) -> tuple[PromptSet, PromptSet]:
    """The prompts GRPO trains and is evaluated on: the datasets of the warm-up's task, kept
    to the buckets ``rl_buckets`` ("" = all), and the training set to its first ``rl_train_size``
    such prompts (0 = all). Filtering (rather than drawing anew) keeps the held-out prompts ones
    the warm-up never saw, and one warm-up serves every choice of RL prompts."""
    train, held_out = build_datasets(seed, train_size, eval_size, buckets)
    held_rows = rl_rows(held_out.buckets, rl_buckets)
    return train.subset(rl_rows(train.buckets, rl_buckets, rl_train_size)), held_out.subset(held_rows)
