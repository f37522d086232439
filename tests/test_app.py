"""The web demo end to end: ``python app.py`` in a subprocess on a loopback port (the shared
``hardened_app`` fixture of ``tests/conftest.py``), driven by ``gradio_client`` against tiny
random 64x64 pipelines; the UI's pure helpers (``vgen.ui.forms``, ``components``, ``results``);
plus the cancel path (Stop and a client that goes away) against an in-process server whose
engine is a slow fake (``handlers.configure``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from vgen.launch import free_port

REPO = Path(__file__).resolve().parent.parent
STEPS = 2


def _wait_for_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the app did not answer on {url} within {timeout:.0f} s")


# ---------------------------------------------------------------------------------------------
# The real app in a subprocess: the shared launcher (conftest.hardened_app)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hardened_app, tmp_path_factory) -> Client:
    return Client(hardened_app.url, verbose=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def models(hardened_app) -> Path:
    return hardened_app.models_root


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    source = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(source).rectangle([16, 16, 47, 47], fill="red")
    source.save(folder / "source.png")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([16, 16, 47, 47], fill=255)
    mask.save(folder / "mask.png")
    (folder / "notes.txt").write_text("this is not an image\n")
    return {"source": folder / "source.png", "mask": folder / "mask.png",
            "text": folder / "notes.txt"}


def _generate(client: Client, prompt: str = "a red circle", **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("randomize_seed", False)
    return client.predict(prompt, api_name="/generate", **kw)


def _parameters(item: dict) -> str:
    return Image.open(item["image"]).info["parameters"]


def test_only_the_documented_endpoints_are_public(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/generate", "/edit", "/attention", "/compare", "/expand",
                                           "/plan", "/status"}
    assert not api["unnamed_endpoints"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/generate"]["parameters"]]
    assert names == ["prompt", "negative_prompt", "model", "steps", "guidance", "seed",
                     "randomize_seed", "width", "height", "num_images", "scheduler", "decoder",
                     "layout"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/edit"]["parameters"]]
    assert names[:4] == ["image", "prompt", "mode", "mask"]


def test_status_says_what_the_server_runs(client):
    client.predict("a red circle", seed=1, randomize_seed=False, api_name="/generate")
    status = client.predict(api_name="/status")
    assert status["device"] == "cpu" and status["torch_threads"] >= 1
    assert status["default_models"]["txt2img"].endswith("tiny-txt2img")
    assert any(ref.endswith("tiny-txt2img") for ref in status["loaded_models"])


def test_generate_returns_pngs_with_their_seeds(client):
    gallery, info, notice = _generate(client, "a red circle to the left of a blue square",
                                      seed=5, num_images=2)
    assert [item["caption"] for item in gallery] == ["seed 5", "seed 6"]
    for item, seed in zip(gallery, (5, 6)):
        image = Image.open(item["image"])
        assert image.format == "PNG" and image.size == (64, 64)  # native pixels, not enlarged
        text = image.info["parameters"]
        assert text.startswith("a red circle to the left of a blue square\n")
        assert f"Seed: {seed}," in text and f"Steps: {STEPS}," in text
    assert "seeds 5, 6" in info and "tiny-txt2img" in info
    assert notice == ""


def test_same_seed_same_pixels_and_restore(client):
    from vgen.ui.components import scheduler_choices
    from vgen.ui.tabs import text_to_image

    first = _generate(client, "two yellow triangles and a green square", seed=11, steps=1)[0][0]
    second = _generate(client, "two yellow triangles and a green square", seed=11, steps=1)[0][0]
    assert Image.open(first["image"]).tobytes() == Image.open(second["image"]).tobytes()
    # Dropping that PNG on "Restore parameters" fills the Text to Image fields.
    prompt, negative, model, steps, guidance, seed, randomize, width, height, scheduler = (
        text_to_image.restore_parameters(first["image"]))
    assert (prompt, steps, seed, randomize, width, height) == (
        "two yellow triangles and a green square", 1, 11, False, 64, 64)
    assert model.endswith("tiny-txt2img") and scheduler in scheduler_choices()


def test_unknown_words_are_reported(client):
    _, _, notice = _generate(client, "a cat on a sofa", steps=1)
    assert "`cat`" in notice and "`sofa`" in notice
    assert "circle" in notice and "square" in notice  # what the model does know
    assert "stabilityai/sd-turbo" in notice  # and where to go for everything else


def _edit(client, pictures, prompt="a blue circle", **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("seed", 3)
    kw.setdefault("randomize_seed", False)
    return client.predict(handle_file(str(pictures["source"])), prompt, api_name="/edit", **kw)


def test_edit_img2img(client, pictures):
    gallery, info, _ = _edit(client, pictures, mode="img2img", strength=0.6)
    text = _parameters(gallery[0])
    assert "Task: img2img" in text and "Denoising strength: 0.6" in text and "Seed: 3," in text
    assert Image.open(gallery[0]["image"]).size == (64, 64)  # the model's native size
    assert gallery[0]["caption"] == "seed 3"


def test_edit_inpaint(client, pictures, models):
    gallery, _, _ = _edit(client, pictures, mode="inpaint",
                          mask=handle_file(str(pictures["mask"])),
                          model=str(models / "tiny-inpaint"))
    text = _parameters(gallery[0])
    assert "Task: inpaint" in text and "tiny-inpaint" in text


def test_edit_instruct(client, pictures, models):
    gallery, _, _ = _edit(client, pictures, "make the square blue", mode="instruct",
                          image_guidance=1.2, model=str(models / "tiny-instruct"))
    text = _parameters(gallery[0])
    assert "Task: instruct" in text and "Image CFG scale: 1.2" in text


BAD_GENERATE = [
    pytest.param(dict(width=10000, height=10000), "width must be from 64 to 2048", id="size"),
    pytest.param(dict(steps=0), "steps must be from 1", id="steps-0"),
    pytest.param(dict(num_images=-1), "number of images must be from 1", id="negative-batch"),
    pytest.param(dict(model="../../etc"), "outside the allowed model folders|not an existing folder",
                 id="model-path"),
]


@pytest.mark.parametrize("kwargs, message", BAD_GENERATE)
def test_bad_generate_input_is_a_readable_error(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        _generate(client, "a red circle", **kwargs)
    gallery, _, _ = _generate(client, "a red circle", steps=1, seed=1)  # still serving
    assert len(gallery) == 1


@pytest.mark.parametrize("which, kwargs, message", [
    pytest.param(None, dict(), "needs a source image", id="no-image"),
    pytest.param("text", dict(), "not a readable image", id="not-an-image"),
    pytest.param("source", dict(mode="inpaint"), "inpainting needs a mask", id="inpaint-no-mask"),
])
def test_bad_edit_input_is_a_readable_error(client, pictures, which, kwargs, message):
    image = handle_file(str(pictures[which])) if which else None
    with pytest.raises(AppError, match=message):
        client.predict(image, "x", api_name="/edit", steps=1, **kwargs)
    gallery, _, _ = _edit(client, pictures, steps=2, strength=0.5)  # still serving
    assert len(gallery) == 1


# ---------------------------------------------------------------------------------------------
# Helpers of the UI, without a server
# ---------------------------------------------------------------------------------------------


def test_editor_layers_become_the_inpainting_mask(tmp_path):
    from vgen.ui.forms import editor_image_and_mask

    Image.new("RGB", (64, 64), "white").save(tmp_path / "bg.png")
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle([8, 8, 23, 23], fill=(255, 61, 245, 90))  # any paint counts
    layer.save(tmp_path / "layer.png")
    editor = {"background": str(tmp_path / "bg.png"), "layers": [str(tmp_path / "layer.png")],
              "composite": str(tmp_path / "bg.png")}
    source, mask = editor_image_and_mask(editor, "inpaint")
    assert source.mode == "RGB" and mask.mode == "L"
    assert mask.getpixel((10, 10)) == 255 and mask.getpixel((40, 40)) == 0
    assert editor_image_and_mask(editor, "img2img")[1] is None
    empty = dict(editor, layers=[])
    assert editor_image_and_mask(empty, "inpaint")[1] is None  # -> "needs a mask"
    assert editor_image_and_mask(None, "img2img") == (None, None)


def test_the_web_server_starts_without_torch(tmp_path):
    """Regression: listing the schedulers and compare axes imported diffusers and torch into the
    server process (~4 s of its start, ~480 MB), though its engine runs in a worker process."""
    import subprocess

    code = ("import sys; from vgen.ui.demo import build_demo; build_demo(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GRADIO_TEMP_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_ui_values_become_requests_with_none_for_defaults():
    from vgen.ui import forms

    req = forms.generate_request("p", None, "", None, None, 7, True, None, None, None,
                                 forms.DEFAULT_SCHEDULER)
    assert (req.model, req.steps, req.guidance, req.seed, req.width, req.height) == (None,) * 6
    assert (req.num_images, req.scheduler, req.negative_prompt) == (1, None, "")
    req = forms.generate_request("p", "n", "org/name", 4, 3.5, 7, False, 128, 64, 2, "euler")
    assert (req.model, req.steps, req.guidance, req.seed, req.width, req.height, req.num_images,
            req.scheduler) == ("org/name", 4, 3.5, 7, 128, 64, 2, "euler")
    with pytest.raises(ValueError, match="whole number"):
        forms.generate_request("p", "", None, 2.5, None, 0, True, None, None, 1, None)
    edit = forms.edit_request(None, None, "make it blue", "instruct", 0.5, 2.0, "", None, None,
                              None, 1, False, None, None, 1, forms.DEFAULT_SCHEDULER, "fast")
    assert (edit.mode, edit.image_guidance, edit.decoder) == ("instruct", 2.0, "fast")
    assert forms.edit_request(None, None, "p", None, None, None, "", None, None, None, 1, False,
                              None, None, 1, None).decoder == "full"


def test_the_ui_sends_0_as_the_models_default():
    """The browser shows an untouched number as 0; the event's ``js`` sends those fields (only)
    as null, so one endpoint serves the UI and the API (whose 0 stays an error)."""
    from vgen.ui.components import zero_means_default

    a, b, c = object(), object(), object()
    js = zero_means_default([a, b, c], [b], reveal="t2i-gallery")
    assert "new Set([1])" in js and "args.slice(0, 3)" in js and "v === 0 ? null : v" in js
    assert '"t2i-gallery"' in js and "scrollIntoView" in js  # results brought into view
    assert "scrollIntoView" not in zero_means_default([a], [a])


def test_model_picker_marks_cached_models(tiny_models, tmp_path, monkeypatch):
    from vgen.ui.components import EDIT_TASKS, T2I_TASKS, model_choices

    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tiny_models["root"]))
    monkeypatch.setenv("VGEN_DEFAULT_MODEL", str(tiny_models["txt2img"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    labels = {ref: label for label, ref in model_choices(T2I_TASKS)}
    tiny = labels[str(tiny_models["txt2img"])]
    assert "✓ cached" in tiny and "default" in tiny
    assert "downloads on first use" in labels["stabilityai/sd-turbo"]
    assert "timbrooks/instruct-pix2pix" not in labels  # an edit-only model
    edit_refs = [ref for _, ref in model_choices(EDIT_TASKS)]
    assert "timbrooks/instruct-pix2pix" in edit_refs


def _finished_job(model: str, width: int, height: int, extras: dict | None = None):
    import types

    from vgen.requests import GenerateRequest
    from vgen.ui.handlers import Job

    result = types.SimpleNamespace(model=model, request=GenerateRequest(
        prompt="a red circle", model=model, width=width, height=height), extras=extras or {})
    return Job("generate", result=result)


def test_a_size_larger_than_the_models_own_gets_a_notice():
    """Defect 11: 128×96 on the 64-px model gave no notice."""
    from vgen.ui import results

    text = results.notice(_finished_job("vgen-shapes", 128, 96))
    assert "trained at 64×64" in text and "128×96" in text and "loses its composition" in text
    assert results.notice(_finished_job("vgen-shapes", 64, 64)) == ""
    assert results.notice(_finished_job("org/unknown", 1024, 1024)) == ""  # size unknown
    # The engine's own figure wins (a model the catalog does not list).
    assert "trained at 32×32" in results.notice(
        _finished_job("org/tiny", 64, 64, {"native_size": (32, 32)}))


def test_the_info_line_and_notice_say_when_openvino_ran_the_denoiser_and_when_it_could_not():
    """VGEN_BACKEND=openvino (vgen.openvino_backend): the info line names the backend unless it
    was PyTorch all along, and a job that fell back to PyTorch says why in the notice."""
    import types

    from vgen.requests import GenerateRequest
    from vgen.ui import results

    def info(extras):
        job = _finished_job("vgen-shapes", 64, 64, extras)
        request = GenerateRequest(prompt="a red circle", model="vgen-shapes", steps=10, guidance=4.0,
                                  width=64, height=64)
        job.result = types.SimpleNamespace(**{**vars(job.result), "request": request}, revision="local",
                                           sampler="DDIM", seeds=(1,), precision="fp32")
        return results.info_line(job), results.notice(job)

    line, notice = info({"backend": "openvino", "backend_note": ""})
    assert line.endswith("fp32 · denoiser on openvino") and notice == ""
    line, _ = info({"backend": "openvino", "backend_note": "", "openvino_parts": "text encoder, denoiser, decoder"})
    assert line.endswith("fp32 · text encoder, denoiser, decoder on openvino")
    line, notice = info({"backend": "torch", "backend_note": "Every denoiser call of this job ran on PyTorch: x."})
    assert line.endswith("denoiser on torch") and "ℹ️ Every denoiser call" in notice
    line, _ = info({"backend": "torch", "backend_note": "Every denoiser call: x.", "openvino_parts": "text encoder"})
    assert line.endswith("denoiser on torch · text encoder on openvino")
    line, notice = info({"backend": "torch", "backend_note": ""})  # the default backend: nothing to say
    assert "denoiser" not in line and notice == ""


def test_stop_and_failure_lines_replace_a_running_jobs_output():
    """Defect 2: Stop and errors left the preview and the previous info line. Stop acts only
    while a job runs (its progress line is on screen); a refusal leaves a failure line."""
    import asyncio

    from vgen.ui import results
    from vgen.ui.handlers import Progress

    skip = {"__type__": "update"}
    first = results.running(Progress("starting", 0.2, first=True))
    assert first[0] is None and first[1].startswith(results.RUNNING) and first[2] == ""
    later = results.running(Progress("denoising: step 3/20", 1.4, preview=("p.png", "preview")))
    assert later[0] == [("p.png", "preview")] and later[1].endswith("· 1 s") and later[2] == skip
    assert asyncio.run(results.stopped(later[1])) == (None, results.STOPPED_LINE, "")
    assert asyncio.run(results.stopped("**tiny** · seed 4")) == (skip, skip, skip)  # kept
    line = results.failed_line(ValueError("steps must be from 1 to 150"))
    assert line.startswith(results.FAILED) and "steps must be" in line
    assert results.refused(line) == (skip, skip, skip)  # the endpoint said why already
    assert results.refused(later[1]) == (skip, skip, skip)  # a stopped job: Stop's line says so
    assert results.refused("**tiny** · seed 4")[1].startswith(results.FAILED)


# ---------------------------------------------------------------------------------------------
# Cancel: an in-process server whose engine call is a slow fake
# ---------------------------------------------------------------------------------------------


class SlowEngine:
    """Stands in for the engine (``handlers.configure``): reports a step every 20 ms until
    cancelled."""

    def __init__(self):
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.abort = threading.Event()  # set at teardown so a failed test leaves no job behind

    def run(self, kind, request, control):
        from vgen.errors import CancelledError

        self.started.set()
        try:
            for step in range(1, 3001):  # about a minute unless cancelled
                time.sleep(0.02)
                control.progress(step, 3000)
                if control.cancel.is_set():
                    self.cancelled.set()
                    raise CancelledError("the job was cancelled")
                if self.abort.is_set():
                    break
            raise AssertionError("the fake engine was never cancelled")
        finally:
            self.finished.set()


class RecordingEngine:
    """Stands in for the engine: records the request and refuses it."""

    def __init__(self):
        self.seen = []

    def run(self, kind, request, control):
        from vgen.errors import InvalidRequestError

        self.seen.append(request)
        raise InvalidRequestError("recorded")


@pytest.fixture(scope="module")
def inprocess_url():
    from vgen.ui.demo import build_demo
    from vgen.ui.server import queue_settings

    demo = build_demo()
    demo.queue(**queue_settings())
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_http(url, timeout=60)
        yield url
    finally:
        demo.close()


@pytest.fixture
def slow_engine():
    from vgen.ui import handlers

    fake = SlowEngine()
    handlers.configure(fake)
    try:
        yield fake
    finally:
        fake.abort.set()
        fake.finished.wait(10)
        handlers.configure()


def test_stop_cancels_the_running_engine(inprocess_url, slow_engine):
    client = Client(inprocess_url, verbose=False)
    job = client.submit("a red circle", api_name="/generate")
    assert slow_engine.started.wait(30), "the job never started"
    deadline = time.monotonic() + 15  # the progress bar moves per denoising step
    progress = None
    while time.monotonic() < deadline and not (progress and progress[0].length == 3000):
        time.sleep(0.05)
        progress = job.status().progress_data
    assert progress and progress[0].unit == "steps" and progress[0].length == 3000
    assert progress[0].desc == "denoising" and 1 <= progress[0].index < 3000
    assert job.cancel()
    assert slow_engine.cancelled.wait(10), "Stop did not reach the engine"
    assert slow_engine.finished.wait(10)


def _queue_messages(url: str, api_name: str, data: list, http):
    """Join the queue as the browser does (also for private UI events) and yield the SSE
    messages; closing this generator hangs up."""
    config = http.get(url + "config").json()
    prefix = config.get("api_prefix", "/gradio_api").strip("/")
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    session = uuid.uuid4().hex
    joined = http.post(f"{url}{prefix}/queue/join",
                       json={"data": data, "fn_index": fn_index, "session_hash": session,
                             "event_data": None, "trigger_id": None})
    assert joined.status_code == 200, joined.text
    with http.stream("GET", f"{url}{prefix}/queue/data", params={"session_hash": session}) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                yield json.loads(line[5:])


def test_a_client_that_goes_away_cancels_its_job(inprocess_url, slow_engine):
    import httpx

    data = ["a red circle", "", None, None, None, 0, True, None, None, 1, "model default", "full",
            None, "", None]  # then the prompt panel's record (a gr.State), the layout, its plan (State)
    with httpx.Client(timeout=30) as http:
        messages = _queue_messages(inprocess_url, "generate", data, http)
        for message in messages:
            if message.get("msg") == "progress":
                break  # the engine is running; now hang up
        messages.close()
    assert slow_engine.started.is_set()
    assert slow_engine.cancelled.wait(20), "a vanished client's job kept running"
    assert slow_engine.finished.wait(10)


def test_the_api_generate_takes_none_for_model_defaults(inprocess_url):
    """What the browser sends once its ``js`` turned the untouched zeros into null."""
    import httpx

    from vgen.ui import handlers

    engine = RecordingEngine()
    handlers.configure(engine)
    data = ["a red circle", "", None, None, None, 3, False, None, None, 2, "model default", "full",
            None, "", None]
    try:
        with httpx.Client(timeout=30) as http:
            for message in _queue_messages(inprocess_url, "generate", data, http):
                if message.get("msg") == "process_completed":
                    assert message["output"]["error"] == "recorded"
                    break
    finally:
        handlers.configure()
    (req,) = engine.seen
    assert (req.steps, req.guidance, req.width, req.height) == (None, None, None, None)
    assert (req.seed, req.num_images, req.scheduler) == (3, 2, None)


def test_a_missing_default_model_is_an_error_on_use_not_at_start(inprocess_url, monkeypatch):
    monkeypatch.setenv("VGEN_DEFAULT_MODEL", "no-such-model")
    client = Client(inprocess_url, verbose=False)
    with pytest.raises(AppError, match="no-such-model"):
        client.predict("a red circle", model="", steps=1, api_name="/generate")


def test_downloading_a_model_reports_bytes_and_files(inprocess_url, local_hub, local_hub_env,
                                                     tmp_path):
    import httpx

    from tiny_models import save_tiny

    save_tiny(tmp_path / "tiny", "txt2img")
    local_hub.add_repo("vgen-tests/tiny-app", from_dir=tmp_path / "tiny")
    data = ["a red circle", "", "vgen-tests/tiny-app", 1, None, 2, False, None, None, 1,
            "model default", "full", None, "", None]
    descs, completed = [], None
    with httpx.Client(timeout=120) as http:
        for message in _queue_messages(inprocess_url, "generate", data, http):
            if message.get("msg") == "progress":
                descs += [p.get("desc") or "" for p in message["progress_data"]]
            if message.get("msg") == "process_completed":
                completed = message
                break
    assert completed and completed["success"], completed
    downloads = [d for d in descs if d.startswith("downloading the model")]
    assert downloads, descs
    assert re.fullmatch(r"downloading the model: [\d.]+ / [\d.]+ MB, \d+/\d+ files", downloads[-1])


def test_on_zero_gpu_the_engine_call_runs_inside_spaces_gpu(monkeypatch):
    import importlib.util
    import types

    from vgen.ui import handlers

    calls = []

    def gpu(duration=60):
        def wrap(fn):
            calls.append(("decorated", duration))

            def on_gpu(*args, **kwargs):
                calls.append(("called", args[0]))
                return fn(*args, **kwargs)

            return on_gpu

        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("VGEN_GPU_DURATION", "90")
    # A second copy of vgen.ui.handlers, imported as on a ZeroGPU Space.
    spec = importlib.util.spec_from_file_location("vgen.ui.handlers_on_zero_gpu", handlers.__file__)
    zero = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, zero)
    spec.loader.exec_module(zero)
    assert zero.ZERO_GPU and calls == [("decorated", 90)]

    def engine(kind, request, control):  # runs in the GPU process: a fresh, picklable control
        assert control.progress is None and not control.cancel.is_set()
        return types.SimpleNamespace(images=(), seeds=()), []

    monkeypatch.setattr(zero, "engine_call", engine)
    from vgen.jobs import JobControl

    job = zero.Job("generate", control=JobControl())
    zero._work(job, lambda: "a request")
    assert job.error is None and calls[-1] == ("called", "generate")


@pytest.mark.parametrize("how", ["aclose", "cancel"])
@pytest.mark.parametrize("handler", ["generate", "edit"])
def test_closing_a_handler_stops_its_engine_before_returning(slow_engine, handler, how, tmp_path):
    """What Gradio does on a client that went away (aclose) and on Stop (task cancel): the
    handler's generator only finishes once its engine thread has stopped."""
    import asyncio

    from vgen.ui.tabs import edit, text_to_image

    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), "white").save(source)
    make = {"generate": lambda: text_to_image.generate_images("a red circle"),
            "edit": lambda: edit.edit_image(str(source), "x", "img2img", strength=0.5)}[handler]

    async def scenario():
        agen = make()
        step = asyncio.ensure_future(anext(agen))
        while not slow_engine.started.is_set():  # updates may come before the engine runs
            if step.done():
                step.result()
                step = asyncio.ensure_future(anext(agen))
            await asyncio.sleep(0.01)
        if how == "aclose":
            await step  # an update while the engine runs (the progress line or a keep-alive)
            await agen.aclose()
        else:
            if step.done():
                step = asyncio.ensure_future(anext(agen))
                await asyncio.sleep(0)  # it waits inside the handler now
            step.cancel()
            with pytest.raises(asyncio.CancelledError):
                await step
        return slow_engine.cancelled.is_set(), slow_engine.finished.is_set()

    assert asyncio.run(scenario()) == (True, True)
