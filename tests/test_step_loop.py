"""The shared step loop's fallback (``step_loop.run_step``): when a step still has budget
left at its cycle cap or at the end of the data, the groups the allocator drew but did
not keep are offered to its ``fallback``, topped up, trained, counted and warned about.
Checked with a test allocator that keeps nothing, so only the mechanism of the base
class is at work; Pilot-Commit's own ranking is in tests/test_pilot_commit*.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openrlhf_cero.allocators import AllocatorError, RolloutAllocator, create_allocator, prompt_id
from openrlhf_cero.allocators import step_loop
from openrlhf_cero.allocators.step_loop import run_step

N = 4
LOGGER = "openrlhf_cero.allocators.step_loop"


class KeepNothing(RolloutAllocator):
    """Draws ``first`` rollouts for every prompt offered and keeps none of them."""

    name = "keep_nothing_test"

    def __init__(self, first: int = 2, **settings) -> None:
        super().__init__(**settings)
        self.first = first

    def _plan(self, prompt_ids: np.ndarray, budget: int) -> np.ndarray:
        return np.full(prompt_ids.size, self.first, dtype=np.int64)

    def _finish(self, prompt_ids: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
        return np.zeros(prompt_ids.size, dtype=bool)


class Data:
    """Prompts 0..size-1 (or endless), rewards alternating 1, 0 within each draw."""

    def __init__(self, size: int | None = None) -> None:
        self.size, self.position, self.drawn, self.calls = size, 0, 0, []

    def take(self, k: int):
        stop = self.position + k if self.size is None else min(self.position + k, self.size)
        handles = list(range(self.position, stop))
        self.position = stop
        return np.array([prompt_id(f"p{h}") for h in handles], dtype=np.uint64), handles

    def draw(self, handles, counts):
        self.calls.append((list(handles), [int(c) for c in counts]))
        self.drawn += int(np.sum(counts))
        return [([(h, j) for j in range(int(c))], np.arange(int(c)) % 2 == 0) for h, c in zip(handles, counts)]


def make(**kw) -> KeepNothing:
    kw.setdefault("n_samples_per_prompt", N)
    return KeepNothing(**kw)


def test_cycle_cap_falls_back_on_the_skipped_groups_in_the_order_offered(caplog):
    alloc, data = make(), Data()
    with caplog.at_level("WARNING", logger=LOGGER):
        out = run_step(alloc, 4 * N, data.take, data.draw, max_cycles=2)
    assert out.capped and out.cycles == 2 and out.prompts_consumed == 8
    # Each chosen group keeps its 2 rollouts and gets 2 more, in one draw for the fallback.
    assert [g.handle for g in out.groups] == [0, 1, 2, 3]
    assert [len(g.samples) for g in out.groups] == [N] * 4
    assert data.calls[-1] == ([0, 1, 2, 3], [2, 2, 2, 2])
    assert [g.samples for g in out.groups][0] == [(0, 0), (0, 1), (0, 0), (0, 1)]
    assert out.fallback_groups == 4 and out.rollouts_drawn == 8 * 2 + 4 * 2 == data.drawn
    [record] = caplog.records
    assert record.levelname == "WARNING" and record.message == out.warning
    assert "keep_nothing_test filled 0 of the 16 rollouts" in record.message
    assert "within 2 cycles" in record.message and "allocator/fallback_groups" in record.message
    m = alloc.metrics()
    assert m["fallback_groups"] == 4 and m["rollouts_trained"] == 16 and m["prompts_trained"] == 4
    assert m["rollouts_drawn"] == out.rollouts_drawn and alloc.rollouts_drawn_total == data.drawn
    assert m["prompts_skipped"] == 4 and m["zero_variance_share"] == 0.0
    assert alloc.metrics()["fallback_groups"] == 0  # per step


def test_a_budget_that_is_not_a_multiple_of_n_ends_with_a_smaller_group():
    out = run_step(make(), 4 * N + 2, Data().take, Data().draw, max_cycles=3)
    assert [len(g.samples) for g in out.groups] == [N, N, N, N, 2]
    assert out.rollouts_trained == 4 * N + 2


def test_the_loop_holds_only_the_candidates_the_fallback_would_choose(monkeypatch):
    held = []
    best = step_loop._best_candidates

    def spy(*args):
        chosen = best(*args)
        held.append(len(chosen))
        return chosen

    monkeypatch.setattr(step_loop, "_best_candidates", spy)
    out = run_step(make(), 3 * N, Data().take, Data().draw, max_cycles=20)
    assert len(held) == 20 and max(held) == 3  # not 20 cycles x 3 prompts
    assert out.rollouts_trained == 3 * N


def test_data_end_fills_the_step_when_it_was_offered_a_full_step_of_prompts():
    alloc, data = make(), Data(size=6)
    out = run_step(alloc, 4 * N, data.take, data.draw)
    assert out.exhausted and out.prompts_consumed == 6
    assert out.rollouts_trained == 4 * N and out.fallback_groups == 4
    assert "the data ran out after 6 prompts" in out.warning


def test_a_short_last_step_falls_back_only_on_one_group_per_prompt_taken():
    """Offered 2 of the 4 prompts of a batch: like OpenRLHF's short last batch, the
    step trains 2 groups, not 4."""
    out = run_step(make(), 4 * N, Data(size=2).take, Data(size=2).draw)
    assert out.exhausted and out.rollouts_trained == 2 * N and out.fallback_groups == 2


def test_no_warning_for_full_steps_short_last_batches_or_the_end_of_the_data(caplog):
    uniform = create_allocator("uniform", n_samples_per_prompt=N)
    data = Data(size=6)
    with caplog.at_level("WARNING", logger=LOGGER):
        assert run_step(uniform, 4 * N, data.take, data.draw).rollouts_trained == 4 * N
        short = run_step(uniform, 4 * N, data.take, data.draw)
        assert short.exhausted and short.rollouts_trained == 2 * N and short.fallback_groups == 0
        empty = run_step(uniform, 4 * N, data.take, data.draw)
        assert empty.exhausted and empty.prompts_consumed == 0 and not empty.groups
    assert not caplog.records
    assert short.warning is None and empty.warning is None


def test_a_step_that_took_prompts_and_trains_nothing_is_never_silent(caplog):
    """Dynamic filtering drops every group until the data ends (stock OpenRLHF's case too):
    the step trains nothing, and says so."""
    uniform = create_allocator("uniform", n_samples_per_prompt=N)
    data = Data(size=12)
    with caplog.at_level("WARNING", logger=LOGGER):
        out = run_step(uniform, 4 * N, data.take, data.draw, accept=lambda r: False)
    assert out.exhausted and not out.groups and out.groups_filtered == 12
    [record] = caplog.records
    assert "uniform filled 0 of the 16 rollouts" in record.message
    assert "No skipped group was left" in record.message and "Dynamic filtering dropped 12 groups" in record.message
    assert "The step trains 0 of 16 rollouts" in record.message


def test_prompts_trained_in_the_step_are_no_candidates():
    class KeepASecondTime(KeepNothing):
        visits = 0

        def _finish(self, prompt_ids, scores):
            self.visits += 1
            return np.array([self.visits == 2 and int(p) == prompt_id("a") for p in prompt_ids], dtype=bool)

    def take(k):  # the same two prompts every cycle
        return np.array([prompt_id("a"), prompt_id("b")], dtype=np.uint64), ["a", "b"]

    alloc = KeepASecondTime(n_samples_per_prompt=2, first=2)
    out = run_step(alloc, 2 * 2, take, Data().draw, max_cycles=2)
    # Cycle 1 keeps none; cycle 2 keeps a. The fallback fills the rest with b, not with the
    # earlier group of a: a prompt trains once per step.
    assert [g.handle for g in out.groups] == ["a", "b"] and out.fallback_groups == 1


def test_fallback_changes_no_state_and_is_repeatable():
    alloc = make()
    data = Data()
    run_step(alloc, 2 * N, data.take, data.draw, max_cycles=1)
    alloc.metrics()
    before = json.dumps(alloc.state_dict(), sort_keys=True)
    ids = np.array([5, 6, 7], dtype=np.uint64)
    rewards = [[1.0, 0.0], [], [1.0]]
    first = alloc.fallback(ids, rewards, 2 * N)
    assert first.tolist() == [N, 0, N]  # prompts without rollouts are left alone by default
    assert alloc.fallback(ids, rewards, 2 * N).tolist() == first.tolist()
    assert json.dumps(alloc.state_dict(), sort_keys=True) == before
    assert alloc.metrics()["rollouts_drawn"] == 0
    assert alloc.fallback(ids, rewards, 0).tolist() == [0, 0, 0]
    assert alloc.fallback([5, 5], [[1.0, 0.0], [0.0, 1.0]], 4 * N).tolist() == [N, 0]  # a prompt once


def test_a_fallback_that_breaks_the_rules_is_an_error():
    class Broken(KeepNothing):
        def _fallback(self, prompt_ids, scores, budget):
            return np.ones(prompt_ids.size, dtype=np.int64)  # fewer than the 2 already drawn

    with pytest.raises(AllocatorError, match="fallback returned group sizes"):
        run_step(Broken(n_samples_per_prompt=N), 2 * N, Data().take, Data().draw, max_cycles=1)


def test_fallback_rewards_are_checked_like_any_rewards():
    with pytest.raises(AllocatorError, match="outside \\[0, 1\\]"):
        make().fallback([1], [[2.0, 0.0]], N)
