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
            elif count == N:  # a fresh full group: the fallback's for a prompt never piloted (evicted)
                rewards = np.ones(N)
                samples = [(name, self.visits[name], "fresh", i) for i in range(count)]
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


def test_no_prompt_in_the_band_within_max_rounds_falls_back_to_the_best_skipped_prompts(caplog):
    """max_rounds reached with nothing committed: no error, the step trains the skipped
    prompts closest to the band, mixed pilots first (7/8 correct, too easy, has a
    gradient) before constant ones (0/8), each pilot + commit in one group of n."""
    script = {f"{kind}{i}": [0 if kind == "h" else 7] for i in range(200) for kind in ("h", "e")}
    data = ScriptedData(script)
    alloc = make(max_rounds=5)
    with caplog.at_level("WARNING", logger="openrlhf_cero.allocators.step_loop"):
        out = run_step(alloc, 2 * N, data.take, data.draw)
    assert out.capped and out.cycles == 5 and alloc.steps == 5
    assert out.rollouts_trained == 2 * N and out.fallback_groups == 2
    assert [g.handle for g in out.groups] == ["e0", "e1"]
    for group in out.groups:
        assert [s[2] for s in group.samples] == ["pilot"] * N_PILOT + ["commit"] * COMMIT
        assert len(group.rewards) == N
    [record] = caplog.records
    assert "filled 0 of the 24 rollouts" in record.message and "allocator/fallback_groups" in record.message
    assert "--allocator.pilot_commit.max_rounds (now 5)" in record.message and out.warning == record.message
    m = alloc.metrics()
    assert m["fallback_groups"] == 2 and m["rollouts_trained"] == 2 * N and m["prompts_trained"] == 2
    assert m["rollouts_drawn"] == out.rollouts_drawn == N_PILOT * out.prompts_consumed + 2 * COMMIT
    assert m["pilot_rollouts_skipped"] == out.rollouts_drawn - out.rollouts_trained
    assert m["prompts_skipped"] == out.prompts_consumed - 2
    assert m["zero_variance_share"] == 0.0  # 7/8 pilots are mixed


def test_fallback_groups_leave_the_queue():
    """A deferred (too hard) prompt trained by the fallback is not re-offered."""
    data = ScriptedData({f"h{i}": [0] for i in range(50)})
    alloc = make(max_rounds=1, defer_delay=1, pool_factor=2.0)
    caller = RequeueingCaller(alloc, data)
    out = run_step(alloc, N, caller.take, data.draw)
    assert [g.handle for g in out.groups] == ["h0"]
    assert alloc.requeue(8).tolist() == [prompt_id("h1")]


def test_every_prompt_evicted_falls_back_to_fresh_full_groups():
    """Evicted prompts get no pilot; when nothing else is left, the fallback gives them n
    fresh rollouts rather than training nothing."""
    data = ScriptedData({f"s{i}": [N_PILOT] for i in range(4)}, epochs=100)
    alloc = make(max_rounds=8, pool_factor=1.0)
    out = run_step(alloc, N, data.take, data.draw)
    assert len(data.pilots) == 8  # each piloted twice (16 correct in a row); later epochs cost nothing
    assert alloc.metrics()["evicted_prompts"] == 4
    assert out.rollouts_trained == N and out.fallback_groups == 1
    # The best candidates are the piloted ones (all-correct pilots, kept while their budget fits).
    assert [s[2] for s in out.groups[0].samples] == ["pilot"] * N_PILOT + ["commit"] * COMMIT
    out = run_step(alloc, N, data.take, data.draw)  # now every prompt offered is already evicted
    assert out.rollouts_trained == N and out.fallback_groups == 1
    assert [s[2] for s in out.groups[0].samples] == ["fresh"] * N
    m = alloc.metrics()
    assert m["pilot_prompts"] == 0 and m["rollouts_drawn"] == N and m["zero_variance_share"] == 1.0


@pytest.mark.parametrize("adaptive_pool", [False, True])
def test_the_data_running_out_with_nothing_in_the_band_still_trains_a_full_step(adaptive_pool):
    """The case of the issue: a small data set where every reward is 1. Each epoch's step
    takes the whole epoch without committing anything (the dataloader starts again for the
    next epoch, as OpenRLHF's does); the step trains a full batch of fallback groups
    instead of nothing. With the adaptive pool, Pilot-Commit soon wants 16x the batch per
    step, more than the data holds: the step is still full, as it took more prompts than
    a batch."""
    alloc = make(pool_factor=2.0, adaptive_pool=adaptive_pool)  # 4 groups: first pool 8
    for epoch in range(3):
        data = ScriptedData({f"s{i}": [N_PILOT] for i in range(20)})
        out = run_step(alloc, 4 * N, data.take, data.draw)
        assert out.exhausted and not out.capped and out.prompts_consumed == 20
        assert out.rollouts_trained == 4 * N and out.fallback_groups == 4
        assert out.warning and "the data ran out after 20 prompts" in out.warning
    assert alloc.metrics()["evicted_prompts"] > 0  # later epochs train evicted prompts, with fresh groups


def test_dynamic_filtering_applies_to_fallback_groups(caplog):
    data = ScriptedData({f"s{i}": [N_PILOT] for i in range(20)})
    alloc = make(max_rounds=2)
    with caplog.at_level("WARNING", logger="openrlhf_cero.allocators.step_loop"):
        out = run_step(alloc, 2 * N, data.take, data.draw, accept=lambda r: 0 < r.mean() < 1)
    # all-correct pilots + alternating commits are mixed, so they pass
    assert out.rollouts_trained == 2 * N and out.groups_filtered == 0
    data = ScriptedData({f"s{i}": [N_PILOT] for i in range(20)})
    alloc = make(max_rounds=2)
    with caplog.at_level("WARNING", logger="openrlhf_cero.allocators.step_loop"):
        out = run_step(alloc, 2 * N, data.take, data.draw, accept=lambda r: r.mean() < 0.8)  # 10/12 correct: dropped
    assert out.rollouts_trained == 0 and out.groups_filtered == 2
    assert "Dynamic filtering dropped 2 groups" in caplog.records[-1].message


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
