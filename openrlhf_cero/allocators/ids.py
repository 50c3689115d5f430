"""Stable prompt ids: the same prompt gets the same id in every epoch, process and restart.

Python's ``hash()`` is salted per process, so ids come from hashlib instead. They are
unsigned 64-bit integers so that allocators can keep per-prompt state in numpy arrays
(a string id alone would cost more memory than a whole CERO record).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def prompt_id(prompt: str, label: object = "") -> int:
    """64-bit id of a (prompt text, label) pair."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(prompt).encode("utf-8"))
    digest.update(b"\x00label\x00")
    digest.update(str("" if label is None else label).encode("utf-8"))
    return int.from_bytes(digest.digest(), "little")


def prompt_ids(prompts: Iterable[str], labels: Iterable[object]) -> np.ndarray:
    return np.array([prompt_id(p, l) for p, l in zip(prompts, labels)], dtype=np.uint64)
