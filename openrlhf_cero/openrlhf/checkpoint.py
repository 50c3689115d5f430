"""Allocator state inside OpenRLHF's checkpoints.

Both trainers put ``prompts_dataloader.state_dict()`` into ``client_states`` right after
a step's samples are generated, and hand it back to ``load_state_dict`` on
``--ckpt.load_enable`` (in async mode, in the generator actor, where the allocator
lives). The allocator's state belongs to exactly that moment, so the prompt dataloader
is wrapped to carry it: one snapshot, always consistent with the data position, in
every trainer, with no change to OpenRLHF's checkpoint code.
"""

from __future__ import annotations

from typing import Any

from openrlhf.utils.logging_utils import init_logger

from openrlhf_cero.allocators import RolloutAllocator

ALLOCATOR_STATE_KEY = "rollout_allocator"

logger = init_logger(__name__)


class AllocatorCheckpointingLoader:
    """OpenRLHF's prompt dataloader, whose state also holds the allocator's."""

    def __init__(self, loader: Any, allocator: RolloutAllocator) -> None:
        self.loader = loader
        self.allocator = allocator

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # sampler, dataset, batch_size, ...
        if name == "loader":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def state_dict(self) -> dict:
        return {**self.loader.state_dict(), ALLOCATOR_STATE_KEY: self.allocator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        allocator_state = state.pop(ALLOCATOR_STATE_KEY, None)
        if allocator_state is None:
            logger.warning(
                "the checkpoint has no rollout-allocator state (written without openrlhf-cero, or by an older "
                "version): the %s allocator starts fresh; the data position is restored",
                self.allocator.name,
            )
        else:
            self.allocator.load_state_dict(allocator_state)
        self.loader.load_state_dict(state)
