"""Fewer compute threads while other processes keep cores busy (issue #23, item 4).

Why: torch's OpenMP threads meet at a barrier after every parallel op. With as many threads as
cores and one core taken by another process, one thread waits for the scheduler at every
barrier while the other spins (OpenMP's default wait) or sleeps and is woken (``PASSIVE``).
The first makes the image many times slower; the second costs every image on a quiet machine
(figures: the README's "Busy cores"). Giving the job only the cores
that are free avoids both: there is no barrier to wait at with one thread, and a quiet machine
keeps OpenMP's default wait (measured: ``vgen bench --busy-core``).

How: :class:`CpuShare` samples the busy time of the cores it may run on (``/proc/stat``) and this process's own
CPU time (``os.times``, all its threads) in a daemon thread every ``PERIOD_S``; what other
processes used over the last ``WINDOW_S`` is the difference. ``adjust()`` sets
``torch.set_num_threads`` to the cores left free (at least 1, at most the threads torch started
with), and is called by the job's thread (OpenMP's thread count belongs to the thread that
sets it) before a job and after every denoising step (``JobControl.adapt``).

Opt-in (``VGEN_ADAPT_THREADS=1``, and the worker and CLI then keep OpenMP's default wait instead
of ``PASSIVE``): a result depends on the thread count in its last bits (floating-point reductions
split another way), so with it a seed gives the same image only under the same load. Only on
Linux (``/proc/stat``); elsewhere, when off, or under ``OMP_WAIT_POLICY=PASSIVE``, nothing
changes.

Small models (:func:`job_threads`): on a CPU, a model with few parameters runs its jobs on one
thread, whatever the wait policy. Its ops are too small for a second thread to gain what waking
it at every barrier costs under ``PASSIVE``, the gain with OpenMP's default wait is a few
percent, and one thread has no barrier to wait at when another process holds a core. The count
depends on the model only, never on the load or on how vgen was started (CLI, app, Python), so
a seed gives the same image everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque

logger = logging.getLogger("vgen.cpu_share")

PERIOD_S = 0.1  # sampling period
WINDOW_S = 0.5  # what "busy now" averages over
BUSY_CORE = 0.25  # a core that others use for more than this share of the window is not free
STAT = "/proc/stat"
SMALL_PARAMS = 50_000_000  # fewer than this in the model's network: one thread on a CPU


def _cores_busy_seconds(cores: frozenset[int]) -> float | None:
    """CPU seconds all processes spent busy since boot on ``cores`` (``/proc/stat``'s per-core
    lines, less idle and iowait), so that load on cores this process may not use does not count;
    None where it cannot be read."""
    try:
        with open(STAT, encoding="ascii") as f:
            lines = f.readlines()
    except OSError:
        return None
    busy, seen = 0, False
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if int(fields[0][3:]) not in cores:
            continue
        # user nice system idle iowait irq softirq steal (guest time is already in user/nice)
        ticks = [int(x) for x in fields[1:9]]
        busy += sum(ticks) - ticks[3] - ticks[4]
        seen = True
    return busy / os.sysconf("SC_CLK_TCK") if seen else None


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def cores_available() -> frozenset[int]:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def threads_for(others_busy: float, cores: int, max_threads: int) -> int:
    """The threads to use when other processes keep ``others_busy`` cores busy (a float:
    1.0 is one core's worth): the cores left free, a core counting as taken once others use more
    than ``BUSY_CORE`` of it; never fewer than 1 nor more than ``max_threads``."""
    free = cores - math.ceil(max(0.0, others_busy) - BUSY_CORE)
    return max(1, min(max_threads, free))


class CpuShare:
    """The sampler and the thread setting of one process (the engine worker or the CLI).

    ``max_threads`` defaults to what torch was started with (``OMP_NUM_THREADS`` or the
    cores); the sampler runs until :meth:`close`."""

    def __init__(self, max_threads: int | None = None, period_s: float = PERIOD_S,
                 window_s: float = WINDOW_S):
        import torch

        self._torch = torch
        self.max_threads = max_threads or torch.get_num_threads()
        self._cores = cores_available()
        self.cores = len(self._cores)
        self.threads = torch.get_num_threads()
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=int(window_s / period_s) + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._period_s = period_s
        from . import config

        # Under OMP_WAIT_POLICY=PASSIVE waiting threads sleep and a shared core costs little:
        # all threads then do better than the free ones (vgen bench --busy-core).
        passive = (config.omp_wait_policy() or "").strip().upper() == "PASSIVE"
        self.enabled = (config.adapt_threads() and not passive
                        and _cores_busy_seconds(self._cores) is not None)
        if self.enabled:
            self._sample()
            threading.Thread(target=self._run, name="vgen-cpu-share", daemon=True).start()

    def _sample(self) -> None:
        busy = _cores_busy_seconds(self._cores)
        if busy is None:
            return
        with self._lock:
            self._samples.append((time.monotonic(), busy, _own_seconds()))

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self._sample()

    def others_busy(self) -> float:
        """Cores' worth of CPU other processes used over the sampled window (0 when unknown)."""
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, b0, o0), (t1, b1, o1) = self._samples[0], self._samples[-1]
        if t1 - t0 <= 0:
            return 0.0
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (t1 - t0))

    def adjust(self) -> int:
        """Set torch's thread count for the calling thread's next ops; returns it."""
        if not self.enabled:
            return self.threads
        want = threads_for(self.others_busy(), self.cores, self.max_threads)
        if want != self.threads:
            self._torch.set_num_threads(want)
            logger.debug("compute threads %d -> %d", self.threads, want)
            self.threads = want
        return want

    def close(self) -> None:
        self._stop.set()
        if self.threads != self.max_threads:
            self._torch.set_num_threads(self.max_threads)
            self.threads = self.max_threads


def job_threads(device_type: str, params: int) -> int | None:
    """The compute threads the jobs of a model with ``params`` parameters (its denoiser, or
    its language model) are held to on ``device_type``; None for no limit: one for a small
    model on a CPU (measured: ``vgen bench --busy-core``, README "Busy cores")."""
    return 1 if device_type == "cpu" and params < SMALL_PARAMS else None


@contextlib.contextmanager
def threads_limited(limit: int | None):
    """torch's compute threads for the calling thread held to at most ``limit`` inside the
    block (None: unchanged), restored on exit."""
    import torch

    before = torch.get_num_threads()
    if limit is None or limit >= before:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(before)
