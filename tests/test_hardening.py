"""Hardening: the attack battery and a short load run against the app on a loopback port
(tests/hardening.py), Stop and busy behaviour, and unit tests of each bound and each guard."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

import hardening
from vgen.errors import InvalidImageError, InvalidRequestError
from vgen.requests import EditRequest, GenerateRequest, Limits, check_inputs

# ---------------------------------------------------------------------------------------------
# Against the running app
# ---------------------------------------------------------------------------------------------


def test_attack_battery(hardened_app):
    summary = hardening.run_attack(hardened_app.url, token_canary=hardened_app.token,
                                   model_root=hardened_app.models_root, log=None)
    failed = [(r["name"], r["answer"], r["health"]) for r in summary["report"]
              if not (r["passed"] and r["healthy"])]
    assert summary["cases"] >= 60
    assert summary["mcp_tools"] is not None  # the MCP route was attacked too
    groups = {r["group"] for r in summary["report"]}
    assert {"mcp", *(f"routes-{api}" for api in hardening.ENDPOINTS)} <= groups
    assert not failed, failed
    assert summary["crashes"] == 0 and summary["bytes_leaked"] == 0
    assert hardened_app.token not in hardened_app.log_text()  # nor in the server's log


def test_short_load_run(hardened_app):
    summary = hardening.run_load(hardened_app.url, users=4, requests=2, steps=2,
                                 pid=hardened_app.pid, settle_s=1.0, log=None)
    assert summary["failed"] == 0 and summary["cross_user"] == 0, summary["errors"]
    assert summary["completed"] + summary["busy"] == 8 and summary["completed"] >= 1
    assert summary["rss_before_mb"] and summary["rss_change"] < 0.25, summary


def test_a_flood_from_one_client_delays_another_by_at_most_two_jobs(hardened_app):
    """Client A submits 50 jobs at once on one session, then client B one: A's beyond
    VGEN_SESSION_JOBS (2) are told at once that the session is busy, and B waits for at most
    two of A's jobs."""
    _wait_until_idle(hardened_app)
    summary = hardening.run_flood(hardened_app.url, jobs=50, steps=8, max_wait=2, log=None)
    _wait_until_idle(hardened_app)
    assert summary["b_ok"], summary
    assert summary["a_session_busy"] >= 50 - 2 - summary["a_busy"], summary
    assert summary["a_failed"] == 0, summary["errors"]
    assert summary["passed"], summary


def test_a_full_queue_answers_busy(hardened_app):
    """More waiting jobs than VGEN_QUEUE_SIZE: the extra ones are refused at once, clearly."""
    from gradio_client import Client

    clients = [Client(hardened_app.url, verbose=False) for _ in range(hardened_app.queue_size + 3)]
    jobs = [c.submit("a red circle", api_name="/generate", steps=150, num_images=4,
                     seed=i, randomize_seed=False) for i, c in enumerate(clients)]
    busy = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(busy) < 2:
            busy = [j for j in jobs if j.done() and j.exception() is not None
                    and hardening.is_busy(j.exception())]
            time.sleep(0.05)
        # 1 running + VGEN_QUEUE_SIZE waiting; the rest are told at once to try again, by the
        # fair queue (Gradio's own queue is sized so that it does not answer first)
        assert len(busy) >= 2, [j.status().code for j in jobs]
        assert "the server is busy" in str(busy[0].exception()), busy[0].exception()
        assert not any(j.done() for j in jobs if j not in busy)  # the others wait or run
    finally:
        for job in jobs:
            job.cancel()
    _wait_until_idle(hardened_app)


def _log_times(log: str, message: str) -> list[datetime]:
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            for m in re.finditer(r"^(\S+ \S+) vgen\.ui INFO " + message, log, re.M)]


def _wait_until_idle(app, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(app.url + "gradio_api/queue/status", timeout=5,
                           trust_env=False).json()
        log = app.log_text()
        started = log.count(" job started")
        ended = sum(log.count(w) for w in (" job done in", " job failed:", " job stopped"))
        if status.get("queue_size", 0) == 0 and started == ended:
            return
        time.sleep(0.1)
    raise AssertionError("the app did not become idle")


def test_stop_ends_within_a_step_and_the_next_job_starts(hardened_app):
    """A's Stop ends A's engine within one denoising step; B (another user, queued behind A)
    starts right after and is not cancelled."""
    from gradio_client import Client

    _wait_until_idle(hardened_app)
    a, b = Client(hardened_app.url, verbose=False), Client(hardened_app.url, verbose=False)
    job_a = a.submit("a red circle", api_name="/generate", steps=150, num_images=4, seed=1,
                     randomize_seed=False)
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 60
    # Until A has moved 5 steps between two samples (progress updates are throttled: the
    # first one seen may already be past step 6).
    while time.monotonic() < deadline and (len(samples) < 2 or samples[-1][1] - samples[0][1] < 5):
        progress = job_a.status().progress_data
        index = progress[0].index if progress else None
        if isinstance(index, int) and (not samples or index != samples[-1][1]):
            samples.append((time.monotonic(), index))
        time.sleep(0.01)
    assert len(samples) >= 2 and samples[-1][1] - samples[0][1] >= 5, "A never got going"
    step_s = (samples[-1][0] - samples[0][0]) / (samples[-1][1] - samples[0][1])
    job_b = b.submit("two yellow triangles", api_name="/generate", steps=2, seed=77,
                     randomize_seed=False)
    time.sleep(0.3)  # B is waiting behind A
    assert not job_b.done()
    cancelled_at = time.monotonic()
    job_a.cancel()
    b_started = None
    while time.monotonic() - cancelled_at < 30 and b_started is None:
        if job_b.status().code.name in ("PROCESSING", "PROGRESS", "ITERATING", "FINISHED"):
            b_started = time.monotonic() - cancelled_at
        time.sleep(0.01)
    gallery, _, _ = job_b.result(timeout=60)
    assert "Seed: 77," in hardening._params(gallery[0])  # B ran to the end: not cancelled
    log = hardened_app.log_text()
    stop = _log_times(log, "generate job cancelled after")[-1]
    stopped = _log_times(log, "generate job stopped")[-1]
    stop_s = (stopped - stop).total_seconds()
    assert stop_s <= step_s + 0.3, (stop_s, step_s)  # within one step (+ the 50 ms poll)
    assert b_started is not None and b_started <= step_s + 1.5, (b_started, step_s)


# ---------------------------------------------------------------------------------------------
# Each bound of a request, enforced by the engine whatever the caller
# ---------------------------------------------------------------------------------------------

LIMITS = Limits()
BASE = GenerateRequest(prompt="a red circle", steps=4, guidance=4.0, seed=1, width=64,
                       height=64, num_images=1)
SOURCE = Image.new("RGB", (64, 64), "white")
MASK = Image.new("L", (64, 64), 255)
EDIT = EditRequest(**{f: getattr(BASE, f) for f in ("prompt", "steps", "guidance", "seed",
                                                      "width", "height", "num_images")},
                   image=SOURCE, mask=MASK, mode="img2img", strength=0.5)

BOUNDS = [
    ("steps", 0, r"steps must be from 1"), ("steps", LIMITS.max_steps + 1, r"steps must be"),
    ("steps", 2.0, r"steps must be an integer"), ("steps", True, r"steps must be an integer"),
    ("steps", "4", r"steps must be an integer"),
    ("guidance", -0.5, r"guidance must be from 0"),
    ("guidance", LIMITS.max_guidance + 1, r"guidance must be"),
    ("guidance", float("nan"), r"guidance must be"), ("guidance", "7", r"guidance must be"),
    ("num_images", 0, r"number of images"), ("num_images", LIMITS.max_images + 1,
                                             r"number of images"),
    ("width", LIMITS.min_side - 8, r"width must be from"),
    ("width", LIMITS.max_side + 8, r"width must be from"), ("width", 100, r"multiple of 8"),
    ("height", 72.0, r"height must be an integer"),
    ("seed", -2, r"seed must be from 0"), ("seed", 2**32, r"seed must be from 0"),
    ("prompt", "x" * (LIMITS.max_prompt_chars + 1), r"at most"),
    ("prompt", "a\x00b", r"NUL"), ("prompt", None, r"must be text"),
    ("negative_prompt", "x" * (LIMITS.max_prompt_chars + 1), r"at most"),
    ("decoder", "turbo", r"decoder must be one of"), ("scheduler", "bogus", r"scheduler"),
]


@pytest.mark.parametrize("name, value, message", BOUNDS,
                         ids=[f"{n}={v!r:.20}" for n, v, _ in BOUNDS])
def test_each_bound_is_enforced(name, value, message):
    with pytest.raises(InvalidRequestError, match=message):
        check_inputs(replace(BASE, **{name: value}), LIMITS)


def test_the_area_bound():
    with pytest.raises(InvalidRequestError, match=r"pixels; at most"):
        check_inputs(replace(BASE, width=2048, height=2048), LIMITS)
    check_inputs(replace(BASE, width=1024, height=1024), LIMITS)  # exactly the cap


EDIT_BOUNDS = [
    (dict(mode="paint"), r"edit mode must be one of"),
    (dict(image=None), r"needs a source image"), (dict(image="x.png"), r"must be a PIL image"),
    (dict(strength=0.0), r"strength must be from 0.01"),
    (dict(strength=1.5), r"strength must be from 0.01"),
    (dict(strength=0.1, steps=4), r"runs no denoising step"),
    (dict(mode="instruct", image_guidance=-1.0), r"image guidance must be"),
    (dict(mode="inpaint", mask=None), r"needs a mask"),
    (dict(mode="inpaint", mask="m.png"), r"mask must be a PIL image"),
]


@pytest.mark.parametrize("change, message", EDIT_BOUNDS, ids=[m for _, m in EDIT_BOUNDS])
def test_each_edit_bound_is_enforced(change, message):
    with pytest.raises(InvalidRequestError, match=message):
        check_inputs(replace(EDIT, **change), LIMITS)


def test_operators_tune_the_bounds(monkeypatch):
    monkeypatch.setenv("VGEN_MAX_STEPS", "10")
    monkeypatch.setenv("VGEN_MAX_IMAGES", "2")
    monkeypatch.setenv("VGEN_MAX_AREA", str(128 * 128))
    with pytest.raises(InvalidRequestError, match="steps must be from 1 to 10"):
        check_inputs(replace(BASE, steps=11))
    with pytest.raises(InvalidRequestError, match="number of images must be from 1 to 2"):
        check_inputs(replace(BASE, num_images=3))
    with pytest.raises(InvalidRequestError, match="pixels"):
        check_inputs(replace(BASE, width=256, height=128))
    monkeypatch.setenv("VGEN_MAX_STEPS", "lots")
    with pytest.raises(InvalidRequestError, match="VGEN_MAX_STEPS"):
        Limits.from_env()


# ---------------------------------------------------------------------------------------------
# The time limit counts a job's own work, not loading the model
# ---------------------------------------------------------------------------------------------


def test_time_limit_starts_when_the_model_is_ready(tiny_env):
    from vgen.generate import generate
    from vgen.jobs import JobControl, TimeLimitError

    control = JobControl(time_limit_s=30)
    control.started -= 3600  # as if downloading the model had taken an hour
    result = generate(GenerateRequest(prompt="a red circle", steps=2, seed=1), control=control)
    assert result.seeds == (1,)
    with pytest.raises(TimeLimitError, match="time limit"):
        generate(GenerateRequest(prompt="a red circle", steps=3, seed=1),
                 control=JobControl(time_limit_s=1e-6))


def test_the_app_has_a_default_time_limit(monkeypatch):
    from vgen import config

    monkeypatch.delenv("VGEN_JOB_TIME_LIMIT", raising=False)
    assert config.job_time_limit_s() == config.DEFAULT_JOB_TIME_LIMIT_S
    monkeypatch.setenv("VGEN_JOB_TIME_LIMIT", "0")
    assert config.job_time_limit_s() is None
    monkeypatch.setenv("VGEN_JOB_TIME_LIMIT", "12.5")
    assert config.job_time_limit_s() == 12.5


# ---------------------------------------------------------------------------------------------
# The app's guards, without a server
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, value, message", [
    ("StrictNumber", "abc", "a whole number"), ("StrictNumber", 2.5, "a whole number"),
    ("StrictNumber", True, "a whole number"), ("StrictNumber", [1], "a whole number"),
    ("StrictNumber", float("nan"), "a finite number"),
    ("StrictNumber", float("inf"), "a finite number"), ("StrictSlider", "max", "a number"),
    ("StrictCheckbox", "false", "true or false"), ("StrictCheckbox", 1, "true or false"),
    ("StrictTextbox", ["a"], "text"), ("StrictDropdown", 5, "text"),
])
def test_wrong_types_are_clear_errors(cls, value, message):
    import gradio as gr

    from vgen.ui import inputs

    component = getattr(inputs, cls)(label="Field", **({"precision": 0} if cls == "StrictNumber"
                                                     else {}))
    with pytest.raises(gr.Error, match=f"Field must be {message}, got"):
        component.preprocess(value)


def test_right_types_pass_unchanged():
    from vgen.ui.inputs import StrictCheckbox, StrictNumber, StrictTextbox

    assert StrictNumber(precision=0).preprocess("5") == 5
    assert StrictNumber(precision=0).preprocess(None) is None
    assert StrictNumber().preprocess(2.5) == 2.5
    assert StrictNumber(precision=0).preprocess(10**30) == 10**30  # the engine's bound says no
    assert StrictCheckbox().preprocess(False) is False
    assert StrictTextbox().preprocess("hi") == "hi"


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_the_editor_checks_before_gradio_decodes(tmp_path, monkeypatch):
    import gradio as gr

    from vgen.ui.inputs import SafeImageEditor

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    editor = SafeImageEditor(type="filepath")
    with pytest.raises(gr.Error, match=r"pixels; at most"):
        editor.convert_and_format_image(hardening.png_bomb(12000), flatten_on_white=True)
    with pytest.raises(gr.Error, match=r"not a readable image"):
        editor.convert_and_format_image(b"%!PS-Adobe-3.0 EPSF-3.0\n", flatten_on_white=True)
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    path = editor.convert_and_format_image(_png(rgba), flatten_on_white=True)
    assert Image.open(path).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    layer = editor.convert_and_format_image(_png(rgba))  # a layer keeps its alpha
    assert Image.open(layer).mode == "RGBA"


def test_image_uploads_are_checked_before_gradio_decodes(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.data_classes import ImageData

    from vgen.ui.inputs import SafeImage

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    bomb.write_bytes(hardening.png_bomb(12000))
    Image.new("RGB", (8, 8), "red").save(good)
    component = SafeImage(type="filepath")
    with pytest.raises(gr.Error, match=r"pixels; at most"):
        component.preprocess(ImageData(path=str(bomb)))
    assert component.preprocess(ImageData(path=str(good)))


def test_the_editor_passes_the_first_frame_notice(tmp_path, monkeypatch):
    from gradio.components.image_editor import EditorDataBlobs

    from vgen.ui.forms import collect_notes, editor_image_and_mask
    from vgen.ui.inputs import SafeImageEditor

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    gif = (tmp_path / "a.gif")
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    editor = SafeImageEditor(type="filepath")
    editor.blob_storage["x"] = EditorDataBlobs(background=gif.read_bytes(), layers=[],
                                               composite=gif.read_bytes())
    from gradio.components.image_editor import EditorData

    value = editor.preprocess(EditorData(id="x"))
    assert any("first frame" in n for n in value["notes"])
    jobs_notes: list[str] = []
    import contextvars

    def job():  # as a job's worker thread does: notes go to the job, in its own context
        collect_notes(jobs_notes)
        return editor_image_and_mask(value, "img2img")

    source, mask = contextvars.copy_context().run(job)
    assert source.mode == "RGB" and mask is None
    assert any("first frame" in n for n in jobs_notes)


def test_accept_blobs_is_bounded():
    from fastapi import HTTPException
    from gradio.data_classes import DataWithFiles

    from vgen.ui.inputs import MAX_PENDING_BLOBS, SafeImageEditor

    editor = SafeImageEditor(type="filepath")

    def send(kind, index, blob_id):
        return editor.accept_blobs(DataWithFiles(
            data={"type": kind, "index": index, "id": blob_id}, files=[("b.png", b"x")]))

    for kind, index in (("layer", str(2**62)), ("layer", "-1"), ("layer", "x"),
                        ("../etc", "0")):
        with pytest.raises(HTTPException):
            send(kind, index, "a")
    for i in range(MAX_PENDING_BLOBS * 2):
        send("background", "null", f"id-{i}")
    assert len(editor.blob_storage) == MAX_PENDING_BLOBS
    assert f"id-{MAX_PENDING_BLOBS * 2 - 1}" in editor.blob_storage


def test_blocked_paths_cover_secrets_but_not_the_upload_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants as hf

    from vgen.ui import server as app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("VGEN_BLOCKED_PATHS", str(tmp_path / "secrets"))
    blocked = app.blocked_paths()
    for must in (app.REPO_DIR, Path(hf.HF_TOKEN_PATH).resolve(), Path("/etc"),
                 Path.home().resolve() / ".ssh", (tmp_path / "secrets").resolve()):
        assert str(must) in blocked
    uploads = (tmp_path / "uploads").resolve()
    assert not any(uploads.is_relative_to(b) for b in map(Path, blocked))
    # Uploads inside the project: the project's own folders are blocked instead of it.
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(app.REPO_DIR / "tests" / "output" / "uploads"))
    blocked = app.blocked_paths()
    assert str(app.REPO_DIR) not in blocked and str(app.REPO_DIR / ".git") in blocked
    settings = app.launch_settings()
    assert settings["allowed_paths"] == [] and settings["max_file_size"] == 20 * 1024 * 1024
    assert settings["enable_monitoring"] is False


def test_request_bodies_are_bounded():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from vgen.ui import server as app

    async def echo(request: Request):
        return PlainTextResponse(str(len(await request.body())))

    web = Starlette(routes=[Route("/", echo, methods=["POST"])],
                    middleware=[Middleware(app.BodySizeLimit, max_body=100, max_upload=1000)])
    client = TestClient(web)
    assert client.post("/", content=b"x" * 100).text == "100"
    assert client.post("/", content=b"x" * 101).status_code == 413
    assert client.post("/", content=iter([b"x" * 60, b"x" * 60])).status_code == 413  # chunked
    multipart = {"content-type": "multipart/form-data; boundary=b"}
    assert client.post("/", content=b"x" * 900, headers=multipart).status_code == 200
    assert client.post("/", content=b"x" * 1001, headers=multipart).status_code == 413


def _guarded(tmp_path):
    """A Starlette app behind the app's middleware (BodySizeLimit, then RequestGuard) whose
    routes echo what reached them; Gradio's upload folder is ``tmp_path / "uploads"``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from vgen.ui.guard import RequestGuard
    from vgen.ui.server import BodySizeLimit

    async def echo(request: Request):
        return PlainTextResponse((await request.body()).decode())

    paths = ["/gradio_api/queue/join", "/gradio_api/call/{api}", "/gradio_api/mcp/",
             "/gradio_api/cancel"]
    web = Starlette(routes=[Route(p, echo, methods=["POST"]) for p in paths],
                    middleware=[Middleware(BodySizeLimit, max_body=1 << 20, max_upload=1 << 20),
                                Middleware(RequestGuard, upload_folder=str(tmp_path / "uploads"))])
    return TestClient(web)


def _fd(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _join(client, data: list, raw: str | None = None):
    import json

    body = raw or json.dumps({"data": data, "fn_index": 0, "session_hash": "s"})
    return client.post("/gradio_api/queue/join", content=body.encode(),
                       headers={"content-type": "application/json"})


def _refusal(answer) -> str:
    (bad,) = [d for d in answer.json()["detail"] if d.get("is_valid") is False]
    assert bad["__type__"] == "validate"  # Gradio's validation format: gradio_client shows it
    return bad["message"]


def test_refused_files_get_a_clear_message_without_patching_gradio(tmp_path):
    """A file path that was not uploaded here, and a file URL to a private or loopback host,
    are refused before Gradio reads them (its own refusal reaches the caller as a bare
    {"error": null}), in words that name no server folder."""
    from vgen.ui.guard import REFUSED_FILE, REFUSED_URL

    client = _guarded(tmp_path)
    upload = tmp_path / "uploads" / "abc" / "ok.png"
    for path in ("/etc/passwd", str(tmp_path / "uploads" / ".." / "secret.txt"),
                 "file:///etc/passwd", "relative.png", str(tmp_path / "uploads-evil" / "x")):
        answer = _join(client, ["a prompt", {"background": _fd(path)}])
        assert answer.status_code == 422 and _refusal(answer) == REFUSED_FILE, path
        assert "/etc" not in answer.text and str(tmp_path) not in answer.text
    for url in ("http://127.0.0.1:7860/config", "http://169.254.169.254/latest/meta-data/",
                "http://[::1]/x", "https://10.0.0.1/x.png", "http://localhost/x",
                "http://no-such-host.invalid/x.png"):
        answer = _join(client, [_fd(url)])
        assert answer.status_code == 422 and _refusal(answer) == REFUSED_URL, url
    assert _join(client, [[{"image": _fd(str(upload)), "caption": None}]]).status_code == 200
    answer = client.post("/gradio_api/call/edit", json={"data": [_fd("/etc/passwd")]})
    assert answer.status_code == 422 and _refusal(answer) == REFUSED_FILE


def test_nan_and_infinity_are_refused_naming_the_input(tmp_path):
    client = _guarded(tmp_path)
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        answer = _join(client, [], raw='{"data": ["x", %s], "fn_index": 0, "session_hash": "s"}'
                       % token)
        assert answer.status_code == 422, token
        assert _refusal(answer) == (f"parameter_1 must be a finite number, got {token} (JSON "
                                    f"has no NaN or Infinity)")
    assert _join(client, ["x", 1e300, -5, None]).status_code == 200  # finite numbers pass


def test_deep_json_is_refused_on_every_route_before_it_recurses(tmp_path):
    """JSON nested 50000 deep made the MCP package raise RecursionError (HTTP 500)."""
    client = _guarded(tmp_path)
    deep = "[" * 50000 + "]" * 50000
    mcp = client.post("/gradio_api/mcp/", content=('{"jsonrpc": "2.0", "id": 7, "method": '
                                                   '"tools/call", "params": %s}' % deep).encode(),
                      headers={"content-type": "application/json"})
    assert mcp.status_code == 400 and mcp.json()["id"] is None  # the id came after the nesting
    assert "nests too deeply" in mcp.json()["error"]["message"]
    moderate = '{"jsonrpc": "2.0", "id": 7, "params": %s}' % ("[" * 100 + "]" * 100)
    mcp = client.post("/gradio_api/mcp/", content=moderate.encode(),
                      headers={"content-type": "application/json"})
    assert mcp.status_code == 400 and mcp.json()["id"] == 7  # deeper than MAX_DEPTH, parsed
    answer = _join(client, [], raw='{"data": [%s], "fn_index": 0, "session_hash": "s"}' % deep)
    assert answer.status_code == 422 and "nests too deeply" in _refusal(answer)
    answer = client.post("/gradio_api/cancel", content=deep.encode())
    assert answer.status_code == 400 and "nests too deeply" in answer.json()["detail"]
    # Not JSON at all, or a valid body: passed on unchanged (Gradio answers it).
    assert client.post("/gradio_api/mcp/", content=b"{not json").text == "{not json"
    body = '{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}'
    assert client.post("/gradio_api/mcp/", content=body.encode()).text == body


def test_the_run_route_is_off_and_gradios_queue_does_not_answer_floods(monkeypatch):
    """/run/<api> ran queued handlers outside the queue (a bare 500 on any error; a
    generator's answer after its first yield); Gradio's queue refused a flood's joins before
    the fair queue could tell the flooder its session was busy."""
    from vgen.ui import server

    monkeypatch.setenv("VGEN_QUEUE_SIZE", "2")
    settings = server.queue_settings()
    assert settings["api_open"] is False
    assert settings["max_size"] >= server.GRADIO_QUEUE_SIZE >= 50  # the flood case's 50 joins
    monkeypatch.setenv("VGEN_QUEUE_SIZE", "1000")
    assert server.queue_settings()["max_size"] >= 1001  # still bounded, above the fair queue's


def test_each_session_has_its_own_job(monkeypatch):
    """Two handlers running at once: cancelling one leaves the other's engine running."""
    from vgen.errors import CancelledError
    from vgen.ui import handlers
    from vgen.ui.tabs.text_to_image import generate_images

    events = {k: threading.Event() for k in ("a_started", "b_started", "release")}
    cancelled = []

    def engine(kind, request, control):
        events["a_started" if request.prompt == "a" else "b_started"].set()
        while not events["release"].is_set():
            if control.cancel.is_set():
                cancelled.append(request.prompt)
                raise CancelledError("cancelled")
            time.sleep(0.01)
        raise InvalidRequestError(f"done {request.prompt}")

    monkeypatch.setenv("VGEN_CONCURRENCY", "2")  # both run at once
    monkeypatch.setattr(handlers, "engine_call", engine)
    handlers.configure()  # a fresh fair queue with two slots

    async def scenario():
        task_a = asyncio.ensure_future(_drain(generate_images("a")))
        task_b = asyncio.ensure_future(_drain(generate_images("b")))
        while not (events["a_started"].is_set() and events["b_started"].is_set()):
            await asyncio.sleep(0.01)
        task_a.cancel()  # A's Stop
        with pytest.raises(asyncio.CancelledError):
            await task_a
        events["release"].set()
        return await task_b

    try:
        assert asyncio.run(scenario()) == "done b"
    finally:
        handlers.configure()
    assert cancelled == ["a"]


async def _drain(agen) -> str:
    import gradio as gr

    try:
        async for _ in agen:
            pass
    except gr.Error as e:
        return e.message
    return "finished"


def test_images_refused_with_the_cap_message_whatever_pil_says():
    from vgen.images import open_image

    for data in (hardening.png_bomb(20000), hardening.jpeg_header_bomb(),
                 hardening.gif_header_bomb()):
        with pytest.raises(InvalidImageError, match=r"pixels; at most \d+ are accepted"):
            open_image(data)
