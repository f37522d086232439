"""Fair queueing of engine jobs: a bounded FIFO of engine slots with a cap per session.

The engine events are registered with Gradio ``concurrency_limit=None``, so Gradio starts every
handler at once; each handler then waits here for one of ``VGEN_CONCURRENCY`` engine slots::

    QUEUE = FairQueue.from_config()

    async def handler(..., request: gr.Request, progress=gr.Progress()):
        async with QUEUE.slot(request.session_hash,
                              on_wait=lambda n: progress(0, desc=f"waiting: {n} ahead")):
            ...  # run the job (the slot is held until this block is left)

What it enforces, at entry (``slot`` raises before waiting):

- one session (Gradio's ``session_hash``: a browser tab, or one ``gradio_client.Client``) has at
  most ``per_session`` jobs waiting or running (``VGEN_SESSION_JOBS``; 0: no cap), else
  ``SessionBusyError``. So a client that floods the app holds at most that many places in the
  line, and another user's job waits for at most that many of the flooder's jobs (per slot);
- at most ``slots + max_waiting`` jobs wait or run in all (``VGEN_CONCURRENCY`` +
  ``VGEN_QUEUE_SIZE``), else ``BusyError``.

Admitted jobs start in arrival order (first in, first out); a freed slot is handed to the job at
the head of the line, never to a later arrival. The slot is released when the ``async with``
block is left for any reason, including the task being cancelled (Stop) or the handler's
generator being closed (client gone) while it waits or while it runs.

Gradio-free and torch-free (plain asyncio plus a ``threading.Lock``, so one queue may serve
event loops in several threads): it is the app's one piece of shared state, bounded by the limits
above. Imports only ``vgen.config`` and ``vgen.errors``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable

from vgen import config
from vgen.errors import BusyError, SessionBusyError

__all__ = ["FairQueue"]


class _Ticket:
    """One admitted job: its session, whether it holds a slot, and how to wake its waiter."""

    __slots__ = ("session", "granted", "loop", "event")

    def __init__(self, session: str | None):
        self.session = session
        self.granted = False
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()  # set (in its own loop) when the line moves

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody left to wake
            self.loop.call_soon_threadsafe(self.event.set)


class FairQueue:
    """``slots`` jobs run at once; at most ``max_waiting`` more wait, first in, first out; one
    session has at most ``per_session`` jobs waiting or running (0: no cap)."""

    def __init__(self, slots: int, max_waiting: int, per_session: int):
        if slots < 1 or max_waiting < 0 or per_session < 0:
            raise ValueError(f"FairQueue needs slots >= 1, max_waiting >= 0 and per_session >= 0,"
                             f" not {slots}, {max_waiting}, {per_session}")
        self.slots, self.max_waiting, self.per_session = slots, max_waiting, per_session
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque[_Ticket] = collections.deque()
        self._sessions: collections.Counter[str] = collections.Counter()  # waiting + running

    @classmethod
    def from_config(cls) -> FairQueue:
        """VGEN_CONCURRENCY slots, VGEN_QUEUE_SIZE waiting, VGEN_SESSION_JOBS per session."""
        return cls(config.concurrency(), config.queue_size(), config.session_jobs())

    # -- the one entry point -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, session: str | None,
                   on_wait: Callable[[int], None] | None = None) -> AsyncIterator[None]:
        """Hold an engine slot for the body of ``async with``.

        ``session``: the caller's session key (``request.session_hash``); None (no request, an
        in-process call) counts toward the global bound only. Raises ``SessionBusyError`` or
        ``BusyError`` at once when the job is not admitted. While the job waits,
        ``on_wait(position)`` is called with the number of jobs ahead of it in the line (0: it
        starts when the next slot frees), first when it starts waiting and again whenever that
        number changes; not at all when a slot is free at once.
        """
        ticket = self._admit(session)
        try:
            await self._wait(ticket, on_wait)
            yield
        finally:  # normal exit, error, cancellation while waiting or running, generator closed
            self._leave(ticket)

    def session_jobs(self, session: str | None) -> int:
        """How many jobs ``session`` has waiting or running (0 for None)."""
        with self._lock:
            return self._sessions.get(session, 0) if session is not None else 0

    async def until_idle(self, session: str | None, timeout_s: float) -> bool:
        """Wait until ``session`` has no job waiting or running, at most ``timeout_s``; whether
        it has none. (Stop waits for it: a job leaves the queue only once its engine stopped
        and its handler yielded its last update.)"""
        deadline = time.monotonic() + timeout_s
        while self.session_jobs(session):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def stats(self) -> dict:
        """For /status: ``slots``, ``running``, ``waiting``, ``max_waiting``, ``per_session``
        (the cap; 0: none), ``sessions`` (how many sessions have jobs) and ``session_jobs`` (each
        such session's count, largest first). Session keys are never shown: another user's
        ``session_hash`` would let a caller read or cancel that user's jobs."""
        with self._lock:
            counts = sorted(self._sessions.values(), reverse=True)
            return {"slots": self.slots, "running": self._running, "waiting": len(self._waiting),
                    "max_waiting": self.max_waiting, "per_session": self.per_session,
                    "sessions": len(counts), "session_jobs": counts}

    # -- inside ------------------------------------------------------------------------------

    def _admit(self, session: str | None) -> _Ticket:
        ticket = _Ticket(session)
        with self._lock:
            held = self._sessions[session] if session is not None else 0
            if self.per_session and session is not None and held >= self.per_session:
                raise SessionBusyError(
                    f"this session already has {held} job{'s' if held != 1 else ''} queued or "
                    f"running (at most {self.per_session}, VGEN_SESSION_JOBS); wait for one to "
                    f"finish or press Stop")
            if self._running + len(self._waiting) >= self.slots + self.max_waiting:
                raise BusyError(
                    f"the server is busy: {len(self._waiting)} jobs are waiting (at most "
                    f"{self.max_waiting}, VGEN_QUEUE_SIZE); try again shortly")
            if session is not None:
                self._sessions[session] += 1
            if self._running < self.slots and not self._waiting:
                self._running += 1
                ticket.granted = True
            else:
                self._waiting.append(ticket)
        return ticket

    async def _wait(self, ticket: _Ticket, on_wait: Callable[[int], None] | None) -> None:
        reported = None
        while True:
            with self._lock:
                if ticket.granted:
                    return
                position = self._waiting.index(ticket)
                ticket.event.clear()  # a wake-up scheduled from now on is not lost
            if on_wait is not None and position != reported:
                on_wait(position)
                reported = position
            await ticket.event.wait()

    def _leave(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket.granted:
                self._running -= 1
            else:
                self._waiting.remove(ticket)
            if ticket.session is not None:
                self._sessions[ticket.session] -= 1
                if self._sessions[ticket.session] <= 0:
                    del self._sessions[ticket.session]
            while self._running < self.slots and self._waiting:  # hand freed slots on, in order
                head = self._waiting.popleft()
                head.granted = True
                self._running += 1
                head.wake()
            for waiter in self._waiting:  # each one's position may have changed
                waiter.wake()
