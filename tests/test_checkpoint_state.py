"""The allocator's state in OpenRLHF's checkpoint, when it is damaged or its settings changed.

The data loader is torchdata's ``StatefulDataLoader`` (what OpenRLHF 0.11.2 builds), the
wrapper is the one the trainers use, and the allocators are the real ones; the
checkpoint is the dict OpenRLHF stores as ``data_loader_state_dict``.
"""

from __future__ import annotations

import base64
import logging

import numpy as np
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from openrlhf_cero.allocators import DamagedStateError, create_allocator, prompt_ids
from openrlhf_cero.openrlhf.checkpoint import ALLOCATOR_STATE_KEY, AllocatorCheckpointingLoader

IDS = prompt_ids([f"prompt {i}" for i in range(32)], [""] * 32)


def _trained(name: str = "cero", **options):
    """An allocator after two steps on fixed rewards, wrapped with a real loader."""
    allocator = create_allocator(name, n_samples_per_prompt=4, min_samples=2, max_samples=16, seed=3, **options)
    for step in range(2):
        batch = IDS[step * 16 : step * 16 + 16]
        counts = allocator.plan(batch, 64)
        rewards = [np.arange(c) % 2 for c in counts]
        while (more := allocator.extend(batch, rewards)).any():
            rewards = [np.r_[r, np.ones(m)] for r, m in zip(rewards, more)]
        allocator.finish(batch, rewards)
    return allocator


def _loader(allocator, tmp_path=None, **kw) -> AllocatorCheckpointingLoader:
    return AllocatorCheckpointingLoader(
        StatefulDataLoader(list(range(10)), batch_size=2), allocator,
        checkpoint_dir=str(tmp_path) if tmp_path else None, **kw,
    )


def _cut_short(state: dict) -> dict:
    """The first prompt-table column of a CERO state with its last byte missing."""
    table = state[ALLOCATOR_STATE_KEY]["state"]["table"]
    column = next(iter(table["columns"]))
    raw = base64.b64decode(table["columns"][column])
    table["columns"][column] = base64.b64encode(raw[:-1]).decode("ascii")
    return state


def test_damaged_state_names_the_allocator_the_checkpoint_and_the_way_out(tmp_path):
    (tmp_path / "_actor").mkdir()
    (tmp_path / "_actor" / "latest").write_text("global_step4")
    saved = _loader(_trained()).state_dict()
    fresh = _trained()  # a different object in the state of a run that resumes
    before = fresh.state_dict()
    with pytest.raises(DamagedStateError) as info:
        _loader(fresh, tmp_path).load_state_dict(_cut_short(saved))
    message = str(info.value)
    assert "allocator cero" in message and "damaged" in message
    assert str(tmp_path / "_actor" / "global_step4") in message
    assert "--allocator.fresh_on_resume true" in message
    assert fresh.state_dict() == before  # all or nothing: nothing half loaded


def test_fresh_on_resume_keeps_the_data_position_and_restarts_the_allocator(tmp_path, caplog):
    source = _loader(_trained())
    iterator = iter(source)
    next(iterator), next(iterator)
    saved = _cut_short(source.state_dict())
    resumed = _loader(create_allocator("cero", n_samples_per_prompt=4, min_samples=2, max_samples=16, seed=3),
                      tmp_path, fresh_on_resume=True)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(saved)
    assert "starts fresh" in caplog.text
    assert resumed.allocator.steps == 0 and resumed.allocator.rollouts_drawn_total == 0
    assert next(iter(resumed)).tolist() == [4, 5]  # the data position came back


def test_resume_with_other_settings_is_logged_with_each_difference(caplog):
    saved = _loader(_trained(prompt_oversample=3.0)).state_dict()
    other = create_allocator("cero", n_samples_per_prompt=4, min_samples=2, max_samples=12, seed=3,
                             prompt_oversample=2.0)
    with caplog.at_level(logging.WARNING):
        _loader(other).load_state_dict(saved)
    warning = caplog.text
    assert "prompt_oversample 3.0 -> 2.0" in warning and "max_samples 16 -> 12" in warning
    assert other.steps == 2  # the state is kept

    caplog.clear()
    same = _trained(prompt_oversample=3.0)
    with caplog.at_level(logging.WARNING):
        _loader(same).load_state_dict(saved)
    assert "settings other than" not in caplog.text


@pytest.mark.parametrize("name", ["uniform", "cero", "vip", "pilot_commit"])
def test_every_allocator_reports_a_damaged_state_and_stays_as_it_was(name):
    allocator = _trained(name)
    state = allocator.state_dict()
    state["state"] = {"garbage": 1} if state["state"] else state["state"]
    state["rng"] = {"bit_generator": "no such generator"}
    before = allocator.state_dict()
    with pytest.raises(DamagedStateError, match=f"allocator {name} is damaged"):
        allocator.load_state_dict(state)
    assert allocator.state_dict() == before
