"""The samples of one training step, with the group structure the allocator decided.

OpenRLHF passes a step's samples as a plain list from the generator to
``train_step`` / ``make_experience_batch`` (through a Ray queue in async mode) and
recovers groups as "every n consecutive samples". With per-prompt counts that is
wrong, so the list itself carries the group sizes (and the allocator's figures for the
step's log). A list subclass pickles with its attributes, so it survives the queue.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


class RolloutBatch(list):
    """A step's samples, groups contiguous in order, ``group_sizes`` summing to ``len(self)``."""

    def __init__(
        self, samples: Iterable[Any] = (), group_sizes: Iterable[int] = (), metrics: dict[str, float] | None = None
    ) -> None:
        super().__init__(samples)
        self.group_sizes = [int(s) for s in group_sizes]
        self.metrics = dict(metrics or {})
        if sum(self.group_sizes) != len(self):
            raise ValueError(f"group sizes sum to {sum(self.group_sizes)} but the batch has {len(self)} samples")


def group_index(rollout_samples: list, n_samples_per_prompt: int) -> torch.Tensor:
    """Group number of each sample position; OpenRLHF's equal groups for a plain list."""
    sizes = getattr(rollout_samples, "group_sizes", None)
    if sizes is None:
        if len(rollout_samples) % n_samples_per_prompt:
            raise ValueError(
                f"{len(rollout_samples)} samples do not form groups of --rollout.n_samples_per_prompt="
                f"{n_samples_per_prompt}"
            )
        return torch.arange(len(rollout_samples)) // n_samples_per_prompt
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
