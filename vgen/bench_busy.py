"""``python -m vgen bench --busy-core``: the embedded model's seconds per image with one core
taken by another process, against idle, under each thread policy.

A busy core is a CPU-bound child (``python -c "while True: pass"``) pinned to core 0 where the
OS allows it. OpenMP's wait policy is fixed when its runtime starts (when torch loads), so each
policy is measured in a child process of its own (``python -m vgen.bench_busy``):

* ``adaptive``: ``VGEN_ADAPT_THREADS=1``: OpenMP's default wait, and only the cores other
  processes leave free (``vgen.cpu_share``);
* ``passive``: all cores, ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep while they wait): what the
  CLI and the app's engine workers set unless the user chose;
* ``fixed``: all cores, OpenMP's default wait (threads spin a while: 15x slower with one of two
  cores busy, issue #23).

A small model (the embedded one) runs its jobs on one thread under every policy
(``vgen.cpu_share.job_threads``), so for it the policies differ only in how OpenMP waits; they
set how many threads a large model's jobs get.

In each child, idle and busy runs of the embedded model at its defaults alternate after a
warm-up; figures are medians, in wall and CPU seconds.

Reported (``busy_core`` in the bench's JSON): per policy ``idle_seconds_per_image``,
``busy_seconds_per_image``, ``busy_over_idle``, the CPU seconds of the same runs and the threads
the busy runs ended with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from . import config
from .launch import die_with_parent

SPIN = "while True: pass"
PROMPT = "a red circle to the left of a blue square"
# policy: the environment of its child (OMP_WAIT_POLICY "" = OpenMP's default)
POLICIES = {
    "adaptive": {"VGEN_ADAPT_THREADS": "1", "OMP_WAIT_POLICY": ""},
    "passive": {"VGEN_ADAPT_THREADS": "0", "OMP_WAIT_POLICY": "PASSIVE"},
    "fixed": {"VGEN_ADAPT_THREADS": "0", "OMP_WAIT_POLICY": ""},
}
REPO_DIR = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def busy_core(core: int = 0):
    """A CPU-bound process for the duration of the block, pinned to ``core`` where possible."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=die_with_parent)
    try:
        if hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {core})
        time.sleep(0.8)  # let it take its core, long enough for vgen.cpu_share's window to see it
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def measure_here(repeats: int = 3, model: str | None = None, steps: int | None = None) -> dict:
    """Idle and busy-core runs of ``model`` (the embedded default) in this process, alternating
    after a warm-up."""
    import torch

    from .catalog import embedded_default
    from .cpu_share import CpuShare
    from .generate import generate
    from .jobs import JobControl
    from .pipelines import ModelCache
    from .requests import GenerateRequest

    model = model or embedded_default()
    cache = ModelCache(max_models=1)
    share = CpuShare()  # adapts only where VGEN_ADAPT_THREADS is on
    req = GenerateRequest(PROMPT, model=model, seed=1234, steps=steps)
    generate(req, cache=cache)  # load and warm up

    def one() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        generate(req, cache=cache, control=JobControl(adapt=share.adjust))
        return time.perf_counter() - t0, time.process_time() - c0

    idle, busy = [], []
    for _ in range(repeats):
        idle.append(one())
        with busy_core():
            busy.append(one())
            busy_threads = cache.get(model).threads or torch.get_num_threads()  # the job's own
    share.close()
    out = {"omp_wait_policy": config.omp_wait_policy(), "adapt_threads": share.enabled,
           "torch_threads": share.max_threads, "busy_threads": busy_threads,
           "model": model, "repeats": repeats,
           "idle_seconds_per_image": round(_median([w for w, _ in idle]), 4),
           "busy_seconds_per_image": round(_median([w for w, _ in busy]), 4),
           "idle_cpu_seconds_per_image": round(_median([c for _, c in idle]), 4),
           "busy_cpu_seconds_per_image": round(_median([c for _, c in busy]), 4)}
    out["busy_over_idle"] = round(out["busy_seconds_per_image"] / out["idle_seconds_per_image"], 3)
    return out


def run_policies(repeats: int = 3, log: Callable[[str], None] = print,
                 policies: tuple[str, ...] = tuple(POLICIES), steps: int | None = None) -> dict:
    """:func:`measure_here` in a child process per thread policy; {policy: figures}."""
    out = {}
    for policy in policies:
        env = config.environment_with(**POLICIES[policy], PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO_DIR), config.raw("PYTHONPATH")])))
        if not env["OMP_WAIT_POLICY"]:
            del env["OMP_WAIT_POLICY"]
        args = [sys.executable, "-m", "vgen.bench_busy", "--repeats", str(repeats)]
        if steps:
            args += ["--steps", str(steps)]
        log(f"busy core: {policy} threads, {repeats} idle and {repeats} busy runs")
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            out[policy] = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
            log(f"  failed: {out[policy]['error']}")
            continue
        out[policy] = json.loads(lines[-1])
        f = out[policy]
        log(f"  idle {f['idle_seconds_per_image']:.2f} s/image, one core busy "
            f"{f['busy_seconds_per_image']:.2f} s/image ({f['busy_over_idle']:.2f}x); CPU "
            f"{f['idle_cpu_seconds_per_image']:.2f} / {f['busy_cpu_seconds_per_image']:.2f} s; "
            f"{f['busy_threads']} of {f['torch_threads']} threads when busy")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vgen.bench_busy", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args(argv)
    print(json.dumps(measure_here(a.repeats, steps=a.steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
