"""Fewer compute threads while other processes hold cores (issue #23, vgen.cpu_share): the rule,
the sampler against a real CPU-bound process, and the engine calling it every step."""

from __future__ import annotations

import os
import time

import pytest
import torch

from vgen import cpu_share
from vgen.bench_busy import busy_core
from vgen.cpu_share import CpuShare, threads_for
from vgen.generate import generate
from vgen.jobs import JobControl
from vgen.pipelines import ModelCache
from vgen.requests import GenerateRequest


@pytest.mark.parametrize("others,cores,max_threads,expected", [
    (0.0, 2, 2, 2), (0.2, 2, 2, 2), (0.5, 2, 2, 1), (1.0, 2, 2, 1), (3.0, 2, 2, 1),
    (1.0, 8, 4, 4), (5.0, 8, 8, 3), (0.0, 1, 1, 1)])
def test_threads_are_the_cores_others_leave_free(others, cores, max_threads, expected):
    assert threads_for(others, cores, max_threads) == expected


needs_two_cores = pytest.mark.skipif(
    len(cpu_share.cores_available()) < 2 or not os.path.exists(cpu_share.STAT),
    reason="needs /proc/stat and two cores")


@needs_two_cores
def test_a_busy_core_takes_a_thread_and_our_own_work_does_not(monkeypatch):
    monkeypatch.setenv("VGEN_ADAPT_THREADS", "1")
    share = CpuShare(max_threads=2, period_s=0.05, window_s=0.4)
    try:
        # Our own threads' work is not "others": a busy torch loop here leaves both threads.
        x = torch.randn(256, 256)
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            x = torch.tanh(x @ x / 256)
        assert share.others_busy() < 0.5
        assert share.adjust() == 2
        with busy_core():  # sleeps long enough for the window to see it
            assert share.others_busy() > 0.5
            assert share.adjust() == 1 and torch.get_num_threads() == 1
        time.sleep(0.6)  # the window forgets it
        assert share.adjust() == 2 and torch.get_num_threads() == 2
    finally:
        share.close()
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("env", [{}, {"VGEN_ADAPT_THREADS": "0"},
                                 {"VGEN_ADAPT_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}])
def test_off_by_default_switched_off_or_passive_nothing_changes(monkeypatch, env):
    monkeypatch.delenv("VGEN_ADAPT_THREADS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = torch.get_num_threads()
    share = CpuShare()
    assert not share.enabled and share.adjust() == before == torch.get_num_threads()
    share.close()


def test_the_engine_adapts_when_the_model_is_ready_and_after_every_step(tiny_env, monkeypatch):
    monkeypatch.setattr(cpu_share, "SMALL_PARAMS", 0)  # the tiny model counts as a large one
    calls = []
    control = JobControl(adapt=lambda: calls.append(1))
    generate(GenerateRequest("a red circle", steps=3, seed=1), control=control,
             cache=ModelCache(max_models=1))
    assert len(calls) == 1 + 3


@pytest.mark.parametrize("device,params,expected", [
    ("cpu", 7_000_000, 1), ("cpu", 49_999_999, 1), ("cpu", 865_000_000, None),
    ("cuda", 7_000_000, None)])
def test_small_models_run_on_one_cpu_thread(device, params, expected):
    assert cpu_share.job_threads(device, params) == expected


def test_threads_limited_restores_and_never_raises_the_count():
    torch.set_num_threads(2)
    with cpu_share.threads_limited(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with cpu_share.threads_limited(4), cpu_share.threads_limited(None):
        assert torch.get_num_threads() == 2


def test_a_small_models_job_keeps_one_thread_whatever_the_load(tiny_env):
    """Regression (issue #23): under OMP_WAIT_POLICY=PASSIVE, what the app's worker and the CLI
    set, the embedded model ran its two threads at twice one thread's time on a quiet EPYC; and
    adapting a job's threads to the load would change a seed's image in its last bits."""
    torch.set_num_threads(2)
    seen, adapted = [], []

    def on_step(pipe, i, t, kwargs):
        seen.append(torch.get_num_threads())

    control = JobControl(adapt=lambda: adapted.append(1), on_step=on_step)
    cache = ModelCache(max_models=1)
    out = generate(GenerateRequest("a red circle", steps=3, seed=1), control=control, cache=cache)
    assert seen == [1, 1, 1] and adapted == [] and torch.get_num_threads() == 2
    assert cache.get(out.model).threads == 1
    # The same seed on two threads outside the engine would differ in its last bits; inside it
    # the image is the same whatever thread count the caller's thread had.
    torch.set_num_threads(1)
    again = generate(GenerateRequest("a red circle", steps=3, seed=1), cache=cache)
    torch.set_num_threads(2)
    assert again.images[0].tobytes() == out.images[0].tobytes()


def test_the_cli_adapts_its_jobs():
    from vgen.cli import _Bars

    control = _Bars().control()
    assert control.adapt is not None and control.adapt.__self__.__class__ is CpuShare
    control.adapt.__self__.close()


def test_the_planner_writes_its_layouts_on_one_thread(monkeypatch):
    from vgen import plan as planning

    seen, sample = [], planning._sample

    def watched(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return sample(*args, **kwargs)

    monkeypatch.setattr(planning, "_sample", watched)
    torch.set_num_threads(2)
    planning.plan(planning.PlanRequest("a red circle to the left of a blue square", seed=0))
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2
