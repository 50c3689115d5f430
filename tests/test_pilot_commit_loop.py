"""Pilot-Commit through the shared step loop (``step_loop.run_step``, the loop the
OpenRLHF generator and the simulator run), with a fake dataloader whose pilot outcomes
are scripted per visit, and a caller that re-offers queued prompts (``requeue``)."""

from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pytest

from openrlhf_cero.allocators.base import AllocatorError
from openrlhf_cero.allocators.ids import prompt_id
from openrlhf_cero.allocators.registry import create_allocator
from openrlhf_cero.allocators.step_loop import run_step

N, N_PILOT, COMMIT = 12, 8, 4  # pilot and commit draws differ in size, so the fake tells them apart


class ScriptedData:
    """A dataloader over named prompts, epoch after epoch, and a ``draw`` that answers the
    pilot of a prompt's v-th visit with ``script[name][v]`` successes out of N_PILOT (the
    last entry repeats) and commits with alternating rewards. Samples are
    (name, visit, "pilot"|"commit", index) so tests can check how groups were assembled."""

    def __init__(self, script: dict[str, list[int]], epochs: int = 1) -> None:
        self.script = script
        self.names = list(script)
        self.ids = {name: prompt_id(name) for name in self.names}
        self.by_id = {pid: name for name, pid in self.ids.items()}
        self.limit = epochs * len(self.names)
        self.cursor = 0
        self.visits: Counter[str] = Counter()
        self.pilots: list[str] = []  # names in the order their pilots were drawn

    def take(self, k: int) -> tuple[np.ndarray, list[str]]:
        stop = min(self.cursor + k, self.limit)
        names = [self.names[i % len(self.names)] for i in range(self.cursor, stop)]
        self.cursor = stop
        return np.array([self.ids[n] for n in names], dtype=np.uint64), names

    def epoch(self) -> int:
        return self.cursor // len(self.names)

    def draw(self, names, counts):
        results = []
        for name, count in zip(names, counts):
            if count == N_PILOT:
                visit = self.visits[name]
                self.visits[name] += 1
                self.pilots.append(name)
                k = self.script[name][min(visit, len(self.script[name]) - 1)]
                rewards = np.array([1.0] * k + [0.0] * (N_PILOT - k))
                samples = [(name, visit, "pilot", i) for i in range(count)]
            else:
                assert count in (0, COMMIT)
                rewards = np.arange(count, dtype=np.float64) % 2
                samples = [(name, self.visits[name] - 1, "commit", i) for i in range(count)]
            results.append((samples, rewards))
        return results


class RequeueingCaller:
    """take_prompts of a caller that supports deferral: queued prompts first, then fresh
    ones. It keeps the texts of prompts the allocator may still hand back (pruned with
    ``queued_ids``); after a restart it has none and resolves ids through the dataset
    index (``data.by_id``), as the generator would by hashing its prompt dataset."""

    def __init__(self, alloc, data: ScriptedData) -> None:
        self.alloc, self.data = alloc, data
        self.kept: dict[int, str] = {}
        self.from_index = 0

    def take(self, k: int):
        again = self.alloc.requeue(k)
        handles = []
        for pid in again.tolist():
            if pid not in self.kept:
                self.from_index += 1
            handles.append(self.kept.get(pid) or self.data.by_id[pid])
        fresh_ids, fresh = self.data.take(k - again.size)
        queued = set(self.alloc.queued_ids().tolist())
        self.kept = {pid: name for pid, name in self.kept.items() if pid in queued}
        self.kept.update((int(pid), name) for pid, name in zip(fresh_ids, fresh))
        return np.concatenate([again, fresh_ids]), handles + fresh


def make(**options):
    options.setdefault("n_pilot", N_PILOT)
    options.setdefault("adaptive_pool", False)
    return create_allocator("pilot_commit", n_samples_per_prompt=N, max_samples=N, **options)


def test_fill_loop_pulls_prompts_beyond_the_first_pool_until_the_budget_is_committed():
    # every fourth prompt in the band, the rest too hard
    data = ScriptedData({f"p{i}": [4 if i % 4 == 0 else 0] for i in range(200)})
    alloc = make(pool_factor=2.0)
    budget = 4 * N
    out = run_step(alloc, budget, data.take, data.draw)
    assert out.rollouts_trained == budget
    assert out.cycles > 1
    assert out.prompts_consumed == data.cursor > alloc.pool_factor * budget // N
    trained = [g.handle for g in out.groups]
    assert len(trained) == 4 and all(int(name[1:]) % 4 == 0 for name in trained)
    assert out.rollouts_drawn == N_PILOT * out.prompts_consumed + COMMIT * len(trained)


def test_pilot_and_commit_rollouts_form_one_group():
    data = ScriptedData({f"p{i}": [1 + i % 6] for i in range(30)})  # all in band
    out = run_step(make(), 5 * N, data.take, data.draw)
    assert len(out.groups) == 5
    for group in out.groups:
        assert len(group.samples) == len(group.rewards) == N
        assert group.prompt_id == prompt_id(group.handle)
        assert {(s[0], s[1]) for s in group.samples} == {(group.handle, 0)}
        assert [s[2] for s in group.samples] == ["pilot"] * N_PILOT + ["commit"] * COMMIT
        assert 0.125 <= group.rewards[:N_PILOT].mean() <= 0.75


@pytest.mark.parametrize("adaptive_pool", [False, True])
def test_every_step_trains_the_same_number_of_samples_and_every_rollout_is_accounted(adaptive_pool):
    rng = np.random.default_rng(11)
    pass_rates = rng.beta(0.35, 0.68, size=150)
    script = {f"q{i}": rng.binomial(N_PILOT, p, size=12).tolist() for i, p in enumerate(pass_rates)}
    data = ScriptedData(script, epochs=10)
    alloc = make(adaptive_pool=adaptive_pool, defer_delay=2, max_rounds=64)
    budget = 6 * N
    drawn = trained = 0
    caller = RequeueingCaller(alloc, data)
    for step in range(40):
        out = run_step(alloc, budget, caller.take, data.draw)
        m = alloc.metrics()
        assert out.rollouts_trained == budget == m["rollouts_trained"]
        assert all(len(g.samples) == N for g in out.groups)
        assert m["rollouts_drawn"] == out.rollouts_drawn
        assert m["pilot_rollouts_skipped"] == out.rollouts_drawn - out.rollouts_trained
        assert m["pilot_rollouts_skipped"] == N_PILOT * (m["pilot_prompts"] - m["pilot_pass"])
        assert m["pilot_prompts"] == m["pilot_pass"] + m["pilot_surplus"] + m["pilot_too_easy"] + m[
            "pilot_too_hard"] + m["pilot_newly_evicted"]
        drawn += out.rollouts_drawn
        trained += out.rollouts_trained
    assert data.epoch() >= 2  # the run crossed epochs
    assert alloc.rollouts_drawn_total == drawn
    assert m["rollouts_drawn_total"] == drawn
    assert m["pilot_rollouts_skipped_total"] == drawn - trained > 0
    assert caller.from_index == 0  # every re-offered prompt's text was still kept


def test_prompts_solved_in_every_pilot_rollout_are_evicted_from_later_epochs():
    # default eviction_threshold 16: two all-correct pilots of 8, in epochs 1 and 2
    script = {"solved": [N_PILOT], **{f"b{i}": [3] for i in range(5)}}
    data = ScriptedData(script, epochs=4)
    alloc = make(pool_factor=1.0)
    skipped_evicted = 0
    while data.cursor < data.limit:
        out = run_step(alloc, N, data.take, data.draw)
        skipped_evicted += alloc.metrics()["pilot_skipped_evicted"]
        assert all(g.handle != "solved" for g in out.groups)
    assert data.pilots.count("solved") == 2  # piloted in epochs 1 and 2 only
    assert skipped_evicted == 2
    assert data.pilots.count("b0") == 4


def test_a_too_hard_prompt_is_re_offered_within_the_epoch_through_requeue():
    script = {"hard": [0, 4], **{f"b{i}": [4] for i in range(10)}}
    data = ScriptedData(script)
    alloc = make(pool_factor=1.0, defer_delay=2)
    trained = []
    caller = RequeueingCaller(alloc, data)
    for _ in range(4):
        out = run_step(alloc, N, caller.take, data.draw)
        trained.append([g.handle for g in out.groups])
    # step 1: "hard" is deferred at cycle 0, "b0" fills; step 2 (cycle 2): "hard" is due again, now in band
    assert trained == [["b0"], ["hard"], ["b1"], ["b2"]]
    assert data.epoch() == 0 and data.pilots[:3] == ["hard", "b0", "hard"]


def test_clear_error_when_the_data_cannot_fill_a_batch_within_max_rounds():
    data = ScriptedData({f"h{i}": [0] for i in range(500)})
    alloc = make(max_rounds=5)
    with pytest.raises(AllocatorError, match=r"filled only 0 of 24 .*--allocator\.pilot_commit\.max_rounds"):
        run_step(alloc, 2 * N, data.take, data.draw)
    assert alloc.steps == 5


def test_clear_error_when_every_prompt_is_evicted():
    data = ScriptedData({f"s{i}": [N_PILOT] for i in range(4)}, epochs=100)
    alloc = make(max_rounds=8, pool_factor=1.0)
    with pytest.raises(AllocatorError, match="pool_factor"):
        run_step(alloc, N, data.take, data.draw)
    assert len(data.pilots) == 8  # each piloted twice (16 correct in a row); later epochs cost nothing
    assert alloc.metrics()["evicted_prompts"] == 4


def test_short_last_batch_when_the_data_ends():
    data = ScriptedData({f"b{i}": [4] for i in range(3)})
    out = run_step(make(pool_factor=1.0), 5 * N, data.take, data.draw)
    assert out.exhausted
    assert 0 < out.rollouts_trained <= 3 * N and all(len(g.samples) == N for g in out.groups)


def test_resume_from_a_checkpoint_repeats_every_decision():
    rng = np.random.default_rng(5)
    script = {f"q{i}": rng.binomial(N_PILOT, p, size=8).tolist() for i, p in enumerate(rng.beta(0.4, 0.6, 80))}
    data = ScriptedData(script, epochs=20)
    options = dict(adaptive_pool=True, defer_delay=2, max_rounds=64)
    alloc = make(**options)
    caller = RequeueingCaller(alloc, data)
    for _ in range(25):
        run_step(alloc, 4 * N, caller.take, data.draw)
    alloc.metrics()  # step figures are logged, not checkpointed
    state = alloc.state_dict()["state"]
    assert state["evicted"] and state["streaks"] and state["queue"]["entries"]
    checkpoint = json.loads(json.dumps(alloc.state_dict()))
    data_at_checkpoint = copy.deepcopy(data)  # the dataloader state OpenRLHF saves beside it

    resumed = make(**options)
    resumed.load_state_dict(checkpoint)
    data_resumed = data_at_checkpoint
    caller_resumed = RequeueingCaller(resumed, data_resumed)  # a new process: no kept texts
    for _ in range(8):
        a = run_step(alloc, 4 * N, caller.take, data.draw)
        b = run_step(resumed, 4 * N, caller_resumed.take, data_resumed.draw)
        assert [g.samples for g in a.groups] == [g.samples for g in b.groups]
        assert (a.rollouts_drawn, a.prompts_consumed, a.cycles) == (b.rollouts_drawn, b.prompts_consumed, b.cycles)
        assert alloc.metrics() == resumed.metrics()
    assert data.pilots == data_resumed.pilots
    assert caller_resumed.from_index > 0  # queued prompts of before the restart were re-offered
    assert resumed.state_dict() == alloc.state_dict()
