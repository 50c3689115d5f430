"""Allocator state inside OpenRLHF's checkpoints.

Both trainers put ``prompts_dataloader.state_dict()`` into ``client_states`` right after
a step's samples are generated, and hand it back to ``load_state_dict`` on
``--ckpt.load_enable`` (in async mode, in the generator actor, where the allocator
lives). The allocator's state belongs to exactly that moment, so the prompt dataloader
is wrapped to carry it: one snapshot, always consistent with the data position, in
every trainer, with no change to OpenRLHF's checkpoint code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openrlhf.utils.logging_utils import init_logger

from openrlhf_cero.allocators import DamagedStateError, RolloutAllocator

ALLOCATOR_STATE_KEY = "rollout_allocator"
FRESH_FLAG = "--allocator.fresh_on_resume"

logger = init_logger(__name__)


class AllocatorCheckpointingLoader:
    """OpenRLHF's prompt dataloader, whose state also holds the allocator's.

    ``checkpoint_dir`` (``--ckpt.path``) only names the checkpoint in messages;
    ``fresh_on_resume`` restores the data position but not the allocator (after a damaged
    state, or to restart the allocator on purpose while keeping the model)."""

    def __init__(
        self,
        loader: Any,
        allocator: RolloutAllocator,
        *,
        checkpoint_dir: str | None = None,
        fresh_on_resume: bool = False,
    ) -> None:
        self.loader = loader
        self.allocator = allocator
        self.checkpoint_dir = checkpoint_dir
        self.fresh_on_resume = fresh_on_resume

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
        if self.fresh_on_resume:
            logger.warning(
                "%s: the %s allocator starts fresh; the model, optimizer and data position come from the checkpoint %s",
                FRESH_FLAG, self.allocator.name, self.checkpoint_name(),
            )
        elif allocator_state is None:
            logger.warning(
                "the checkpoint has no rollout-allocator state (written without openrlhf-cero, or by an older "
                "version): the %s allocator starts fresh; the data position is restored",
                self.allocator.name,
            )
        else:
            self._load_allocator(allocator_state)
        self.loader.load_state_dict(state)

    def _load_allocator(self, allocator_state: dict) -> None:
        try:
            self.allocator.load_state_dict(allocator_state)
        except DamagedStateError as error:
            raise DamagedStateError(
                f"{error}, in the checkpoint {self.checkpoint_name()}; to keep the model and data position and start "
                f"the allocator fresh, resume with {FRESH_FLAG} true (or resume from an earlier checkpoint: "
                "--ckpt.max_num keeps several)"
            ) from error.__cause__
        changes = self.allocator.settings_changes(allocator_state)
        if changes:
            listed = ", ".join(f"{name} {saved!r} -> {now!r}" for name, (saved, now) in changes.items())
            logger.warning(
                "resuming the %s allocator with settings other than the checkpoint's (%s): its restored state is "
                "kept and the new settings apply from this step on (docs/faq.md)",
                self.allocator.name, listed,
            )

    def checkpoint_name(self) -> str:
        """``{ckpt.path}/_actor/{tag}`` of the checkpoint DeepSpeed resumes from (its ``latest``)."""
        if not self.checkpoint_dir:
            return "(--ckpt.path not known)"
        actor_dir = Path(self.checkpoint_dir) / "_actor"
        latest = actor_dir / "latest"
        tag = latest.read_text().strip() if latest.is_file() else "latest"
        return str(actor_dir / tag)
