"""Who may touch the engine's model when: generation vs. weight updates.

vLLM runs ``collective_rpc`` (weight updates) between scheduler steps, and
``pause_generation(mode="keep")`` freezes in-flight requests until resumed. The
stand-in does the same at token boundaries: the generating thread calls
:meth:`ModelAccess.token_boundary` between decoding steps and parks there while a
pause or a weight update is pending; an update waits only for the current step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ModelAccess:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._updates_waiting = 0
        self._updating = False
        self._in_step = False  # a decoding step (forward pass) is running

    # --- generating thread -------------------------------------------------------
    def token_boundary(self) -> None:
        """Between two decoding steps: park while paused or while an update is pending."""
        with self._cond:
            self._in_step = False
            self._cond.notify_all()
            while self._paused or self._updates_waiting or self._updating:
                self._cond.wait()
            self._in_step = True

    def generation_done(self) -> None:
        with self._cond:
            self._in_step = False
            self._cond.notify_all()

    # --- control side ----------------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model alone (for a weight update); waits for the current step only."""
        with self._cond:
            self._updates_waiting += 1
            while self._in_step or self._updating:
                self._cond.wait()
            self._updates_waiting -= 1
            self._updating = True
        try:
            yield
        finally:
            with self._cond:
                self._updating = False
                self._cond.notify_all()

    def pause(self) -> None:
        """Returns once no decoding step is running; requests stay parked until resume()."""
        with self._cond:
            self._paused = True
            while self._in_step:
                self._cond.wait()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused
