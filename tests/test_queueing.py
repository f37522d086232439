"""vgen.ui.queueing.FairQueue: FIFO engine slots, a cap per session, a global bound, and no
leaked counts when a waiting or running job is cancelled or its generator closed. Fake jobs on
plain asyncio (each test runs its own loop with ``asyncio.run``); no timing assertions."""

from __future__ import annotations

import asyncio
import threading

import pytest

from vgen.errors import BusyError, SessionBusyError
from vgen.ui.queueing import FairQueue


async def _until(predicate, ticks: int = 10_000) -> None:
    """Let the loop run until ``predicate()`` holds (a bounded number of iterations)."""
    for _ in range(ticks):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition was never reached")


def _idle(q: FairQueue) -> bool:
    s = q.stats()
    return s["running"] == 0 and s["waiting"] == 0 and s["sessions"] == 0 and not s["session_jobs"]


class Jobs:
    """Fake jobs that hold their slot until released; ``started`` in the order they got one."""

    def __init__(self, q: FairQueue):
        self.q, self.started, self.finished, self.release = q, [], [], {}
        self.positions: dict[str, list[int]] = {}

    def submit(self, name: str, session: str | None) -> asyncio.Task:
        self.release[name] = asyncio.Event()
        self.positions[name] = []
        return asyncio.create_task(self._run(name, session), name=name)

    async def _run(self, name: str, session: str | None) -> None:
        async with self.q.slot(session, on_wait=self.positions[name].append):
            self.started.append(name)
            await self.release[name].wait()
        self.finished.append(name)


def test_jobs_start_first_in_first_out():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=10, per_session=0)
        jobs = Jobs(q)
        names = [f"j{i}" for i in range(6)]
        tasks = [jobs.submit(n, f"s{i}") for i, n in enumerate(names)]
        await _until(lambda: q.stats()["waiting"] == 5)
        for n in names:
            await _until(lambda: jobs.started[-1:] == [n])
            assert q.stats()["running"] == 1
            jobs.release[n].set()
        await asyncio.gather(*tasks)
        assert jobs.started == names and jobs.finished == names
        assert _idle(q)

    asyncio.run(scenario())


def test_two_slots_run_two_jobs_and_the_rest_wait_in_order():
    async def scenario():
        q = FairQueue(slots=2, max_waiting=10, per_session=0)
        jobs = Jobs(q)
        tasks = [jobs.submit(f"j{i}", None) for i in range(5)]
        await _until(lambda: len(jobs.started) == 2 and q.stats()["waiting"] == 3)
        jobs.release["j1"].set()  # the second finishes first: the head of the line starts
        await _until(lambda: len(jobs.started) == 3)
        assert jobs.started == ["j0", "j1", "j2"]
        for name in ("j0", "j2", "j3", "j4"):
            jobs.release[name].set()
        await asyncio.gather(*tasks)
        assert jobs.started == ["j0", "j1", "j2", "j3", "j4"] and _idle(q)

    asyncio.run(scenario())


def test_a_waiting_job_hears_its_position_whenever_it_changes():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=10, per_session=0)
        jobs = Jobs(q)
        tasks = [jobs.submit(n, None) for n in ("a", "b", "c", "d")]
        await _until(lambda: q.stats()["waiting"] == 3)
        for n in ("a", "b", "c", "d"):
            await _until(lambda: jobs.started[-1:] == [n])
            jobs.release[n].set()
        await asyncio.gather(*tasks)
        assert jobs.positions == {"a": [], "b": [0], "c": [1, 0], "d": [2, 1, 0]}

    asyncio.run(scenario())


def test_one_session_is_refused_at_once_past_its_cap():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=10, per_session=2)
        jobs = Jobs(q)
        held = [jobs.submit("a1", "A"), jobs.submit("a2", "A")]
        await _until(lambda: q.stats()["waiting"] == 1)
        third = asyncio.create_task(q.slot("A").__aenter__())
        await asyncio.sleep(0)  # admission is checked before any wait: done after one step
        assert third.done() and isinstance(third.exception(), SessionBusyError)
        text = str(third.exception())
        assert "this session already has 2 jobs queued or running (at most 2, " \
               "VGEN_SESSION_JOBS); wait for one to finish or press Stop" in text
        assert isinstance(third.exception(), BusyError)  # a busy answer, for callers
        other = jobs.submit("b1", "B")  # another session is not affected
        anonymous = [jobs.submit(f"n{i}", None) for i in range(3)]  # no session: no cap
        await _until(lambda: q.stats()["waiting"] == 5)
        assert q.stats()["session_jobs"] == [2, 1]
        jobs.release["a1"].set()  # A is back under its cap: admitted again
        await _until(lambda: jobs.started == ["a1", "a2"])
        again = jobs.submit("a3", "A")
        await _until(lambda: q.stats()["waiting"] == 5)
        for name in ("a2", "b1", "n0", "n1", "n2", "a3"):
            await _until(lambda: jobs.started[-1:] == [name])
            jobs.release[name].set()
        await asyncio.gather(*held, other, *anonymous, again)
        assert _idle(q)

    asyncio.run(scenario())


def test_no_session_cap_when_per_session_is_0():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=10, per_session=0)
        jobs = Jobs(q)
        tasks = [jobs.submit(f"a{i}", "A") for i in range(6)]
        await _until(lambda: q.stats()["waiting"] == 5)
        assert q.stats()["session_jobs"] == [6]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert _idle(q)

    asyncio.run(scenario())


def test_the_global_bound_answers_busy_at_once():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=2, per_session=0)
        jobs = Jobs(q)
        tasks = [jobs.submit(f"j{i}", f"s{i}") for i in range(3)]  # 1 running + 2 waiting
        await _until(lambda: q.stats()["waiting"] == 2)
        extra = asyncio.create_task(q.slot("s9").__aenter__())
        await asyncio.sleep(0)
        assert extra.done() and type(extra.exception()) is BusyError
        assert "the server is busy: 2 jobs are waiting (at most 2, VGEN_QUEUE_SIZE); try again " \
               "shortly" in str(extra.exception())
        assert q.stats()["session_jobs"] == [1, 1, 1]  # the refused one left no count
        jobs.release["j0"].set()
        await _until(lambda: q.stats()["waiting"] == 1)
        tasks.append(jobs.submit("j3", "s9"))  # room again
        await _until(lambda: q.stats()["waiting"] == 2)
        for name in ("j1", "j2", "j3"):
            await _until(lambda: jobs.started[-1:] == [name])
            jobs.release[name].set()
        await asyncio.gather(*tasks)
        assert _idle(q)

    asyncio.run(scenario())


def test_cancelling_a_waiting_job_frees_its_place():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=2, per_session=1)
        jobs = Jobs(q)
        a, b, c = jobs.submit("a", "A"), jobs.submit("b", "B"), jobs.submit("c", "C")
        await _until(lambda: q.stats()["waiting"] == 2)
        b.cancel()  # Stop while waiting
        await asyncio.gather(b, return_exceptions=True)
        assert b.cancelled()
        assert q.stats()["waiting"] == 1 and q.stats()["sessions"] == 2
        assert jobs.positions["c"] == [1, 0]  # C moved up at once
        again = jobs.submit("b2", "B")  # B's cap and the global place are free again
        await _until(lambda: q.stats()["waiting"] == 2)
        for name in ("a", "c", "b2"):
            await _until(lambda: jobs.started[-1:] == [name])
            jobs.release[name].set()
        await asyncio.gather(a, c, again)
        assert "b" not in jobs.started and _idle(q)

    asyncio.run(scenario())


def test_cancelling_a_running_job_starts_the_next_one():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=2, per_session=1)
        jobs = Jobs(q)
        a, b = jobs.submit("a", "A"), jobs.submit("b", "B")
        await _until(lambda: jobs.started == ["a"] and q.stats()["waiting"] == 1)
        a.cancel()  # Stop while running
        await _until(lambda: jobs.started == ["a", "b"])
        stats = q.stats()
        assert a.cancelled() and (stats["running"], stats["waiting"]) == (1, 0)
        assert stats["session_jobs"] == [1]
        jobs.release["b"].set()
        await b
        assert _idle(q)

    asyncio.run(scenario())


def test_closing_a_handler_generator_releases_its_slot():
    """A handler is an async generator: Gradio closes it when the client goes away."""

    async def scenario():
        q = FairQueue(slots=1, max_waiting=2, per_session=2)

        async def handler(session):
            async with q.slot(session):
                for i in range(100):
                    yield i
                    await asyncio.sleep(0)

        running = handler("A")
        assert await anext(running) == 0
        waiting = asyncio.create_task(anext(handler("B")))
        await _until(lambda: q.stats()["waiting"] == 1)
        await running.aclose()  # closed at a yield, inside the slot
        assert await waiting == 0  # B got the slot
        assert q.stats()["running"] == 1 and q.stats()["session_jobs"] == [1]

    asyncio.run(scenario())


def test_an_error_in_the_job_or_in_on_wait_releases_the_slot():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=2, per_session=1)
        with pytest.raises(ZeroDivisionError):
            async with q.slot("A"):
                1 / 0
        assert _idle(q)
        jobs = Jobs(q)
        holder = jobs.submit("a", "A")
        await _until(lambda: jobs.started == ["a"])

        def broken(position):
            raise RuntimeError("progress failed")

        with pytest.raises(RuntimeError):
            async with q.slot("B", on_wait=broken):
                pass
        assert q.stats()["waiting"] == 0 and q.stats()["session_jobs"] == [1]
        jobs.release["a"].set()
        await holder
        assert _idle(q)

    asyncio.run(scenario())


def _flood(persistent: bool) -> dict:
    """Session A submits 50 jobs at once, then session B one. ``persistent``: each of A's
    refused jobs retries until it is admitted (a client that keeps flooding). Returns how many
    of A's jobs started between B's submit and B's start, and how many were refused."""

    async def scenario():
        q = FairQueue(slots=1, max_waiting=16, per_session=2)
        events: list[str] = []
        refused = 0

        async def job(name: str, session: str) -> None:
            nonlocal refused
            while True:
                try:
                    async with q.slot(session):
                        events.append(f"start {name}")
                        for _ in range(3):  # some work
                            await asyncio.sleep(0)
                        events.append(f"done {name}")
                        return
                except SessionBusyError:
                    refused += 1
                    if not persistent:
                        events.append(f"refused {name}")
                        return
                    await asyncio.sleep(0)

        flood = [asyncio.create_task(job(f"a{i}", "A")) for i in range(50)]
        await asyncio.sleep(0)  # all 50 have asked
        events.append("submit b")
        other = asyncio.create_task(job("b", "B"))
        await asyncio.gather(*flood, other)
        assert _idle(q)
        submit, start = events.index("submit b"), events.index("start b")
        between = [e for e in events[submit:start] if e.startswith("done a")]
        return {"a_done_before_b_started": len(between), "refused": refused, "events": events}

    return asyncio.run(scenario())


def test_a_flood_from_one_session_delays_another_by_at_most_two_jobs():
    result = _flood(persistent=False)
    assert result["a_done_before_b_started"] <= 2, result["events"][:12]
    assert result["refused"] == 48  # told at once
    assert sum(e.startswith("done a") for e in result["events"]) == 2


def test_a_persistent_flooder_still_lets_another_session_in_after_two_jobs():
    result = _flood(persistent=True)
    assert result["a_done_before_b_started"] <= 2, result["events"][:12]
    assert sum(e.startswith("done a") for e in result["events"]) == 50  # A's all ran, in turn


def test_one_queue_serves_event_loops_in_several_threads():
    q = FairQueue(slots=1, max_waiting=4, per_session=0)
    holding, release, order = threading.Event(), threading.Event(), []

    async def first():
        async with q.slot("A"):
            order.append("A")
            holding.set()
            while not release.is_set():
                await asyncio.sleep(0.001)

    async def second():
        async with q.slot("B"):
            order.append("B")

    t = threading.Thread(target=asyncio.run, args=(first(),))
    t.start()
    assert holding.wait(30)

    async def waiter():
        task = asyncio.create_task(second())
        await _until(lambda: q.stats()["waiting"] == 1)
        release.set()  # A's loop (another thread) releases; B's loop is woken
        await asyncio.wait_for(task, 60)

    asyncio.run(waiter())
    t.join(30)
    assert order == ["A", "B"] and _idle(q)


def test_stats_never_show_session_keys():
    async def scenario():
        q = FairQueue(slots=1, max_waiting=4, per_session=2)
        jobs = Jobs(q)
        tasks = [jobs.submit("a", "secret-session-hash"), jobs.submit("b", "other-hash")]
        await _until(lambda: q.stats()["waiting"] == 1)
        stats = q.stats()
        assert stats == {"slots": 1, "running": 1, "waiting": 1, "max_waiting": 4,
                         "per_session": 2, "sessions": 2, "session_jobs": [1, 1]}
        assert "hash" not in repr(stats)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert _idle(q)

    asyncio.run(scenario())


def test_from_config_reads_the_three_variables(monkeypatch):
    monkeypatch.setenv("VGEN_CONCURRENCY", "3")
    monkeypatch.setenv("VGEN_QUEUE_SIZE", "5")
    monkeypatch.setenv("VGEN_SESSION_JOBS", "0")
    q = FairQueue.from_config()
    assert (q.slots, q.max_waiting, q.per_session) == (3, 5, 0)
    for name in ("VGEN_CONCURRENCY", "VGEN_QUEUE_SIZE", "VGEN_SESSION_JOBS"):
        monkeypatch.delenv(name)
    q = FairQueue.from_config()
    assert (q.slots, q.max_waiting, q.per_session) == (1, 16, 2)


@pytest.mark.parametrize("args", [(0, 1, 1), (1, -1, 1), (1, 1, -1)])
def test_nonsense_limits_are_refused(args):
    with pytest.raises(ValueError, match="FairQueue needs"):
        FairQueue(*args)


def test_the_module_is_gradio_and_torch_free():
    import subprocess
    import sys

    code = ("import sys, importlib.util, pathlib; "
            "spec = importlib.util.spec_from_file_location('queueing', 'vgen/ui/queueing.py'); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "bad = [n for n in ('gradio', 'torch', 'numpy') if n in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_stop_waits_until_the_sessions_job_has_left_the_queue():
    """Stop's line is sent once the stopped job has ended (results.stopped), so a late update
    of the job cannot overwrite it: until_idle returns when the session's last job leaves."""
    async def scenario():
        q = FairQueue(slots=1, max_waiting=4, per_session=2)
        entered, release = asyncio.Event(), asyncio.Event()

        async def job():
            async with q.slot("A"):
                entered.set()
                await release.wait()

        task = asyncio.create_task(job())
        await entered.wait()
        assert q.session_jobs("A") == 1 and q.session_jobs("B") == 0
        assert not await q.until_idle("A", timeout_s=0.1)  # still running
        asyncio.get_running_loop().call_later(0.1, release.set)
        assert await q.until_idle("A", timeout_s=5) and q.session_jobs("A") == 0
        await task
        assert await q.until_idle(None, timeout_s=0)  # no session: nothing to wait for

    asyncio.run(scenario())
