"""Per-prompt state in flat numpy columns, keyed by 64-bit prompt ids.

A training run may see millions of distinct prompts, but one step touches about a
thousand. A Python dict of records would cost hundreds of bytes per prompt and a
sorted array would cost O(tracked) per insert, so the table is an open-addressing hash
index (linear probing, vectorised over the batch) over densely packed rows:

* ``slots`` (int32, power-of-two size, load <= 1/2) holds a row number or -1;
* every column, the keys included, is a dense array with one entry per row, grown
  by 1.5x, so rows never move and a row number stays valid for the table's life.

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
        self.size = 0
        self.keys = np.zeros(_MIN_ROWS, dtype=np.uint64)
        self.columns = {name: np.full(_MIN_ROWS, default, dtype=dt) for name, (dt, default) in self.spec.items()}
        self._bits = _MIN_SLOTS_LOG2
        self.slots = np.full(1 << self._bits, _EMPTY, dtype=np.int32)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.slots.nbytes + sum(c.nbytes for c in self.columns.values())

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
            free = self.slots[slot] == _EMPTY
            # Several pending ids may want the same free slot: the first of each wins.
            candidates = np.flatnonzero(free)
            _, winners = np.unique(slot[candidates], return_index=True)
            won = np.zeros(pending.size, dtype=bool)
            won[candidates[winners]] = True
            self.slots[slot[won]] = rows[pending[won]]
            pending = pending[~won]
            slot = slot[~won]
            taken = self.slots[slot] != _EMPTY
            slot = np.where(taken, (slot + 1) & mask, slot)

    def _home(self, ids: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((ids * _GOLDEN) >> np.uint64(64 - self._bits)).astype(np.int64)

    def _reserve(self, rows_needed: int) -> None:
        if rows_needed > self.keys.size:
            capacity = max(rows_needed, int(self.keys.size * 1.5))
            self.keys = _grown(self.keys, capacity, 0)
            for name, (_, default) in self.spec.items():
                self.columns[name] = _grown(self.columns[name], capacity, default)
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


def _grown(array: np.ndarray, capacity: int, default: float) -> np.ndarray:
    out = np.full(capacity, default, dtype=array.dtype)
    out[: array.size] = array
    return out


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")


def _decode(text: str, dtype: Any, size: int) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    array = np.frombuffer(base64.b64decode(text), dtype=dtype)
    if array.size != size:
        raise ValueError(f"prompt table column holds {array.size} values, expected {size}")
    return array.astype(dtype.newbyteorder("="))
