"""STAND-IN reward for CPU smoke runs: a per-prompt coin with a known bias, not a grader.

A tiny random model never solves real math, so every group would score 0 and
per-prompt allocation would have nothing to act on. Instead each prompt's label
carries a latent pass rate ``p`` (drawn when the dataset is built) and a response
"passes" when a stable hash of the full query text (prompt + response), mapped to
[0, 1), falls below ``p``. Distinct responses therefore pass independently with
probability ``p``: prompts have real, heterogeneous difficulty, and the same text
always gets the same reward (deterministic across processes and runs).

This file is self-contained (hashlib + torch) because ``tiny.py`` copies it into the
assets directory as ``reward_func.py`` for ``--reward.remote_url``; OpenRLHF calls
``reward_func(queries, prompts, labels)`` there and reads ``rewards``, ``scores`` and
``extra_logs`` from the returned dict.
"""

from __future__ import annotations

import hashlib

import torch

LABEL_SEPARATOR = "|p="


def make_label(answer: str, pass_rate: float) -> str:
    """``"<answer>|p=<pass rate>"``: the answer for show, the pass rate for the reward."""
    if not 0.0 <= pass_rate <= 1.0:
        raise ValueError(f"pass_rate must be in [0, 1], got {pass_rate}")
    return f"{answer}{LABEL_SEPARATOR}{pass_rate:.4f}"


def parse_pass_rate(label: str) -> float:
    answer, sep, rate = str(label).rpartition(LABEL_SEPARATOR)
    if not sep:
        raise ValueError(f"label {label!r} carries no pass rate; expected '<answer>{LABEL_SEPARATOR}<0..1>'")
    return float(rate)


def text_uniform(text: str) -> float:
    """A deterministic value in [0, 1) from the text (sha256, not Python's salted hash)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def reward_func(queries: list[str], prompts: list[str], labels: list[str], **kwargs) -> dict:
    pass_rates = [parse_pass_rate(label) for label in labels]
    rewards = torch.tensor([float(text_uniform(q) < p) for q, p in zip(queries, pass_rates)], dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {"stand_in_pass_rate": torch.tensor(pass_rates, dtype=torch.float32)},
    }
