"""Pilot-Commit's queue of prompts to offer again later.

A prompt whose pilot says "too hard for now" is deferred: it waits a few cycles and is
then handed back to the caller, who re-offers it (see ``PilotCommitAllocator.requeue``).
A prompt that was in the band but did not fit in the step's budget (surplus) waits one
cycle. Each prompt keeps a count of how often in a row it was deferred, so a prompt that
stays too hard is dropped from the queue after ``max_defers`` tries and only comes back
with the dataloader's next epoch, instead of eating pilot rollouts every few steps.

Entries are either *waiting* (in a heap ordered by due cycle, then arrival) or *out*
(handed to the caller or offered fresh by the dataloader, awaiting the pilot's verdict).
Only prompt ids are stored: the caller keeps or rebuilds the prompt text by id.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass
class _Entry:
    times_deferred: int
    due: int | None  # None while out
    seq: int  # arrival order of the live heap item; stale heap items carry another seq


class DeferredQueue:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._heap: list[tuple[int, int, int]] = []  # (due, seq, prompt id); lazily deleted
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[int]:
        return list(self._entries)

    def waiting(self) -> int:
        return sum(1 for e in self._entries.values() if e.due is not None)

    def times_deferred(self, prompt_id: int) -> int:
        entry = self._entries.get(prompt_id)
        return entry.times_deferred if entry else 0

    def wait(self, prompt_id: int, due: int, times_deferred: int) -> None:
        """Put a prompt in line to be offered again from cycle ``due`` on."""
        entry = _Entry(times_deferred, due, self._next_seq)
        self._next_seq += 1
        self._entries[prompt_id] = entry
        heapq.heappush(self._heap, (due, entry.seq, prompt_id))

    def mark_out(self, prompt_ids: Iterable[int]) -> None:
        """These prompts are being piloted now: no longer waiting, count kept until the verdict."""
        for pid in self._entries.keys() & set(prompt_ids):
            entry = self._entries.get(pid)
            if entry is not None:
                entry.due = None

    def put_back(self, prompt_id: int, due: int) -> None:
        """An out prompt that was not piloted after all waits again, its count unchanged."""
        entry = self._entries.get(prompt_id)
        if entry is not None and entry.due is None:
            self.wait(prompt_id, due, entry.times_deferred)

    def forget(self, prompt_id: int) -> None:
        self._entries.pop(prompt_id, None)

    def forget_all(self, prompt_ids: list[int]) -> None:
        for pid in self._entries.keys() & set(prompt_ids):
            del self._entries[pid]

    def take_due(self, now: int, limit: int) -> list[int]:
        """Up to ``limit`` waiting prompts due by cycle ``now``, earliest first; they become out."""
        taken: list[int] = []
        while self._heap and len(taken) < limit and self._heap[0][0] <= now:
            _, seq, pid = heapq.heappop(self._heap)
            entry = self._entries.get(pid)
            if entry is None or entry.seq != seq or entry.due is None:
                continue  # stale: forgotten, re-queued since, or already out
            entry.due = None
            taken.append(pid)
        return taken

    # ── checkpoint ──

    def state(self) -> dict[str, Any]:
        """Waiting entries in the order they would be taken, then out entries: reloading
        gives the same ``take_due`` answers."""
        live = [(due, seq, pid) for due, seq, pid in self._heap if self._is_live(pid, seq)]
        waiting = [[pid, due, self._entries[pid].times_deferred] for due, seq, pid in sorted(live)]
        out = [[pid, None, e.times_deferred] for pid, e in self._entries.items() if e.due is None]
        return {"entries": waiting + out}

    def load_state(self, state: dict[str, Any]) -> None:
        self.__init__()
        for pid, due, times_deferred in state["entries"]:
            pid, times_deferred = int(pid), int(times_deferred)
            if due is None:
                self._entries[pid] = _Entry(times_deferred, None, -1)
            else:
                self.wait(pid, int(due), times_deferred)

    def _is_live(self, pid: int, seq: int) -> bool:
        entry = self._entries.get(pid)
        return entry is not None and entry.seq == seq and entry.due is not None
