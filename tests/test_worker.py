"""The app's engine worker processes (vgen.worker): a job there gives what it gives in process,
with progress, previews, cancel, errors and a crashed worker handled; tiny models, CPU."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from vgen.errors import CancelledError, InvalidRequestError
from vgen.generate import generate
from vgen.jobs import JobControl
from vgen.pipelines import ModelCache
from vgen.requests import GenerateRequest
from vgen.worker import EngineCrashedError, EnginePool


@pytest.fixture
def pool(tiny_env):
    pool = EnginePool()  # the workers inherit tiny_env's environment
    yield pool
    pool.close()


def _request(tiny_env, **kw) -> GenerateRequest:
    return GenerateRequest(prompt="a red circle", model=str(tiny_env["txt2img"]),
                           **{"steps": 3, "seed": 4, **kw})


def test_a_job_in_a_worker_matches_the_same_job_here(pool, tiny_env):
    steps, previews = [], []
    control = JobControl(progress=lambda i, n: steps.append((i, n)),
                         preview=lambda i, n, image: previews.append(image))
    result, known = pool.run("generate", _request(tiny_env), control)
    here = generate(_request(tiny_env), cache=ModelCache(max_models=1))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(here.images[0]))
    assert result.images[0].info["parameters"] == here.images[0].info["parameters"]
    assert steps == [(1, 3), (2, 3), (3, 3)] and known == []
    assert pool.loaded_models() == [str(tiny_env["txt2img"].resolve())]


def test_errors_and_cancel_come_back_as_the_engine_raised_them(pool, tiny_env):
    with pytest.raises(InvalidRequestError, match="steps must be from 1"):
        pool.run("generate", _request(tiny_env, steps=0), JobControl())
    control = JobControl()
    control.progress = lambda i, n: control.cancel.set()  # Stop after the first step
    with pytest.raises(CancelledError):
        pool.run("generate", _request(tiny_env, steps=50), control)
    stopped = JobControl()
    stopped.cancel.set()  # Stop before the job reached the worker: it does not run
    with pytest.raises(CancelledError):
        pool.run("generate", _request(tiny_env, steps=50), stopped)
    result, _ = pool.run("generate", _request(tiny_env), JobControl())  # the worker goes on
    assert result.images[0].size == (64, 64)


def test_a_worker_that_dies_is_an_error_and_is_replaced(pool, tiny_env):
    pool.run("generate", _request(tiny_env), JobControl())
    (worker,) = pool._all
    control = JobControl(progress=lambda i, n: os.kill(worker.proc.pid, signal.SIGKILL))
    with pytest.raises(EngineCrashedError, match="stopped unexpectedly"):
        pool.run("generate", _request(tiny_env, steps=50), control)
    result, _ = pool.run("generate", _request(tiny_env), JobControl())
    assert result.images[0].size == (64, 64) and worker not in pool._all


def test_a_download_in_a_worker_reports_its_progress(tiny_env, local_hub, local_hub_env, tmp_path):
    from tiny_models import save_tiny

    save_tiny(tmp_path / "tiny", "txt2img")
    commit = local_hub.add_repo("vgen-tests/tiny-worker", from_dir=tmp_path / "tiny")
    pool = EnginePool()  # started after local_hub_env: it downloads from the loopback Hub
    try:
        seen = []
        result, _ = pool.run("generate", GenerateRequest(prompt="a red circle", steps=2, seed=1,
                                                         model="vgen-tests/tiny-worker"),
                             JobControl(download=seen.append))
    finally:
        pool.close()
    assert result.revision == commit and result.images[0].size == (64, 64)
    assert seen and seen[-1].files_done == seen[-1].files_total > 0


def test_feature_maps_are_made_where_the_generator_is_loaded(pool, tiny_env):
    from PIL import Image

    from vgen.features import FeaturesRequest

    fm, _ = pool.run("features", FeaturesRequest(Image.new("RGB", (64, 64), (200, 40, 40)), "vae",
                                                 model=str(tiny_env["txt2img"])), JobControl())
    assert fm.layers and fm.views()  # the app makes its PCA and channel views from these
    assert pool.loaded_models() == [str(tiny_env["txt2img"].resolve())]


# ---- warm-up ----------------------------------------------------------------------------------

def test_the_first_worker_loads_the_default_model_before_any_job(tiny_env):
    """EnginePool(warm_up=True), what the app starts: the default model is loaded by the time
    the first job arrives, even when that job loads nothing (it fails its checks)."""
    bad = _request(tiny_env, steps=0)
    for warm, expected in ((False, []), (True, [str(tiny_env["txt2img"].resolve())])):
        pool = EnginePool(warm_up=warm)
        try:
            with pytest.raises(InvalidRequestError):
                pool.run("generate", bad, JobControl())
            assert pool.loaded_models() == expected
        finally:
            pool.close()


def test_warm_up_leaves_a_hub_default_model_to_its_first_job(tiny_env, monkeypatch, caplog):
    """No download at start: a Hub model is fetched when a job asks, with its progress shown;
    and a default model that cannot load is the first job's error to report, not the worker's."""
    from vgen import pipelines
    from vgen.worker import warm_up

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VGEN_DEFAULT_MODEL", "someone/a-model")
    with caplog.at_level("INFO", logger="vgen.worker"):
        warm_up()
    assert "on the Hub" in caplog.text and pipelines.model_cache().loaded() == []
    monkeypatch.setenv("VGEN_DEFAULT_MODEL", str(tiny_env["root"] / "no-such-model"))
    with caplog.at_level("INFO", logger="vgen.worker"):
        warm_up()
    assert "warm-up skipped" in caplog.text and pipelines.model_cache().loaded() == []
