"""Per-prompt state in flat numpy columns, keyed by 64-bit prompt ids.

A training run may see millions of distinct prompts, but one step touches about a
thousand. A Python dict of records would cost hundreds of bytes per prompt and a
sorted array would cost O(tracked) per insert, so the table is an open-addressing hash
index (linear probing, vectorised over the batch) over densely packed rows:

* ``slots`` (int32, power-of-two size, load <= 1/2) holds a row number or -1;
* rows are packed records (key and every column side by side, one cache line per
  prompt), grown by 1.5x, so a row number stays valid for the table's life.

Bytes per tracked prompt = 8 (key) + the columns' item sizes, times at most 1.5 for
row growth, plus 8-16 for the slots. Lookup and insert of a batch cost O(batch)
amortised, independent of how many prompts are tracked.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

_EMPTY = -1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads sequential ids too
_MIN_SLOTS_LOG2 = 10
_MIN_ROWS = 1024


class PromptTable:
    """Rows of named numpy columns addressed by uint64 prompt id.

    ``columns`` maps a name to ``(dtype, default)``; a newly inserted prompt's row holds
    the defaults. Callers read and write ``table.columns[name][rows]`` directly.
    """

    def __init__(self, columns: dict[str, tuple[Any, float]]) -> None:
        self.spec = {name: (np.dtype(dtype), default) for name, (dtype, default) in columns.items()}
        if "key" in self.spec:
            raise ValueError("'key' is the prompt id's own column")
        self.record = np.dtype([("key", np.uint64)] + [(name, dt) for name, (dt, _) in self.spec.items()])
        self.size = 0
        self._allocate_rows(_MIN_ROWS)
        self._bits = _MIN_SLOTS_LOG2
        self.slots = np.full(1 << self._bits, _EMPTY, dtype=np.int32)

    def _allocate_rows(self, capacity: int) -> None:
        """One packed record per row (key and columns side by side), so that touching a
        prompt reads one cache line rather than one per column; ``keys`` and ``columns``
        are views of it."""
        old = getattr(self, "rows", None)
        self.rows = np.zeros(capacity, dtype=self.record)
        for name, (_, default) in self.spec.items():
            self.rows[name] = default
        if old is not None:
            self.rows[: old.size] = old
        self.keys = self.rows["key"]
        self.columns = {name: self.rows[name] for name in self.spec}

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.slots.nbytes

    # ── lookup and insert ──

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is not tracked."""
        ids = np.asarray(ids, dtype=np.uint64)
        rows = np.full(ids.size, _EMPTY, dtype=np.int64)
        slot = self._home(ids)
        pending = np.arange(ids.size)
        mask = self.slots.size - 1
        while pending.size:
            row = self.slots[slot].astype(np.int64)
            empty = row == _EMPTY
            hit = ~empty & (self.keys[np.maximum(row, 0)] == ids[pending])
            rows[pending[hit]] = row[hit]
            go_on = ~(empty | hit)
            pending = pending[go_on]
            slot = (slot[go_on] + 1) & mask
        return rows

    def lookup_or_insert(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, inserting (with the column defaults) those not tracked yet."""
        ids = np.asarray(ids, dtype=np.uint64)
        rows = self.lookup(ids)
        missing = rows < 0
        if missing.any():
            new_ids, first, inverse = np.unique(ids[missing], return_index=True, return_inverse=True)
            # Keep the batch's first-seen order so row numbers do not depend on id values.
            order = np.argsort(first, kind="stable")
            new_rows = np.empty(new_ids.size, dtype=np.int64)
            new_rows[order] = self._insert_new(new_ids[order])
            rows[missing] = new_rows[inverse.reshape(-1)]
        return rows

    def _insert_new(self, ids: np.ndarray) -> np.ndarray:
        """Append rows for distinct, untracked ids and index them."""
        self._reserve(self.size + ids.size)
        rows = np.arange(self.size, self.size + ids.size, dtype=np.int64)
        self.keys[rows] = ids
        for name, (_, default) in self.spec.items():
            self.columns[name][rows] = default
        self.size += ids.size
        self._index(ids, rows)
        return rows

    def _index(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Place rows of distinct ids into empty slots; colliding ids probe on together."""
        slot = self._home(ids)
        mask = self.slots.size - 1
        pending = np.arange(ids.size)
        while pending.size:
            free = np.flatnonzero(self.slots[slot] == _EMPTY)
            # Several ids may want the same free slot: write them all (numpy keeps the last
            # write of repeated indices) and read back who won.
            self.slots[slot[free]] = rows[pending[free]]
            won = np.zeros(pending.size, dtype=bool)
            won[free] = self.slots[slot[free]] == rows[pending[free]]
            pending = pending[~won]
            slot = (slot[~won] + 1) & mask

    def _home(self, ids: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((ids * _GOLDEN) >> np.uint64(64 - self._bits)).astype(np.int64)

    def _reserve(self, rows_needed: int) -> None:
        if rows_needed > self.rows.size:
            self._allocate_rows(max(rows_needed, int(self.rows.size * 1.5)))
        if 2 * rows_needed > self.slots.size:
            bits = self._bits
            while 2 * rows_needed > (1 << bits):
                bits += 1
            self._bits = bits
            self.slots = np.full(1 << bits, _EMPTY, dtype=np.int32)
            self._index(self.keys[: self.size], np.arange(self.size, dtype=np.int64))

    # ── serialisation ──

    def state(self) -> dict[str, Any]:
        """JSON-serialisable: base64 of the used part of every column (little-endian)."""
        return {
            "size": self.size,
            "keys": _encode(self.keys[: self.size]),
            "columns": {name: _encode(col[: self.size]) for name, col in self.columns.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        keys = _decode(state["keys"], np.uint64, size)
        missing = set(self.spec) - set(state["columns"])
        if missing:
            raise ValueError(f"prompt table state lacks columns {sorted(missing)}")
        fresh = PromptTable({name: (dt, default) for name, (dt, default) in self.spec.items()})
        fresh._reserve(size)
        fresh.keys[:size] = keys
        for name, (dt, _) in self.spec.items():
            fresh.columns[name][:size] = _decode(state["columns"][name], dt, size)
        fresh.size = size
        fresh._index(keys, np.arange(size, dtype=np.int64))
        self.__dict__.update(fresh.__dict__)


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")


def _decode(text: str, dtype: Any, size: int) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    array = np.frombuffer(base64.b64decode(text), dtype=dtype)
    if array.size != size:
        raise ValueError(f"prompt table column holds {array.size} values, expected {size}")
    return array.astype(dtype.newbyteorder("="))
