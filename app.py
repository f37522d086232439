"""vgen web demo: a Gradio Blocks UI over the ``vgen`` engine, and nothing else.

Tabs: **Text to Image**, **Edit** and **Features** (per-word attention maps, map -> inpainting
mask, denoising path, feature maps). Named API endpoints for ``gradio_client``: ``/generate``,
``/edit`` and ``/attention``; every other event is private. Handlers only translate: UI values -> a typed request -> ``vgen.generate`` /
``vgen.edit`` -> UI values, and ``VgenError`` / ``ValueError`` -> ``gr.Error``.

Cancel design: each engine handler is an async generator that runs the engine in its own worker
thread with its own ``JobControl``, reports per-step and download progress through
``gr.Progress`` and yields a no-op update about once a second while it waits. When the event is
cancelled (Stop, ``cancels=[event]``) or the client goes away (noticed at the next yield), Gradio
cancels or closes the generator; its ``finally`` sets that job's ``control.cancel`` (the engine
stops within one denoising step) and waits for the worker thread to end, so the concurrency slot
is only freed once the engine has really stopped. There is no global job state: a Stop cancels
only the job of the session that pressed it.

Run ``python app.py``; environment: ``GRADIO_SERVER_NAME`` (default 0.0.0.0),
``GRADIO_SERVER_PORT`` (7860), ``VGEN_CONCURRENCY`` (1 engine job at a time),
``VGEN_QUEUE_SIZE`` (16 waiting; more are answered "busy, try again"), ``VGEN_MAX_FILE_SIZE``
(20mb per upload), ``VGEN_MAX_BODY_SIZE`` (2mb per non-upload request), ``VGEN_JOB_TIME_LIMIT``
(seconds of a job's own work, model loading not counted; 300, 0 = none), ``VGEN_BLOCKED_PATHS``
(extra folders never served, separated by ``:``), ``VGEN_GPU_DURATION`` (ZeroGPU seconds, 120),
plus the engine's own ``VGEN_*`` variables (default model, model roots, limits).

Hardening: every value from a browser or API caller goes through the engine's checks
(``vgen.requests.check_inputs``, ``vgen.hub.parse_reference``, ``vgen.images``); uploads to the
image editor are checked (format allow-list, pixel cap before decoding) before Gradio decodes
them; only Gradio's upload/cache folder is served (``allowed_paths`` empty, secrets and the
project folder in ``blocked_paths``); request bodies are bounded; the queue is bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import gradio.component_meta

# Gradio writes a "<module>.pyi" stub next to any module that subclasses a component (a help for
# custom-component packages); for the subclasses below that would be an app.pyi rewritten on
# every start. Not wanted here.
if hasattr(gradio.component_meta, "create_or_modify_pyi"):
    gradio.component_meta.create_or_modify_pyi = lambda *args, **kwargs: None

from vgen.catalog import CATALOG, EMBEDDED_EDIT_MODEL, default_model, entry_for
from vgen.errors import InvalidRequestError, VgenError
from vgen.requests import EDIT_MODES, EditRequest, GenerateRequest, Limits

logger = logging.getLogger("vgen.app")

DEFAULT_SCHEDULER = "model default"
DEFAULT_MAX_FILE_SIZE = "20mb"
POLL_S = 0.05  # how often a waiting handler looks at its job
YIELD_EVERY_S = 1.0  # how often it yields, so Gradio notices a client that went away
ENGINE_CONCURRENCY_ID = "vgen-engine"  # generate and edit share one concurrency limit

EXAMPLE_PROMPTS = [
    "a red circle to the left of a blue square",
    "two yellow triangles and a green square",
    "a large purple circle at the top",
    "a small green triangle below an orange circle",
]

HUB_POINTER = (
    "The built-in **vgen-shapes** model draws coloured shapes on a 64×64 canvas and knows "
    "about 40 words (colours, shapes, sizes, counts, positions). For anything else pick a Hub "
    "model in **Model**, e.g. `stabilityai/sd-turbo`, or type any diffusers repo id "
    "(`org/name` or `org/name@revision`); it is downloaded on first use."
)

# Small images (the 64x64 shapes world) are shown enlarged and crisp; files keep native pixels.
CSS = """
.vgen-pixelated img, .vgen-pixelated canvas { image-rendering: pixelated; }
.vgen-gallery .thumbnail-item img, .vgen-gallery .preview img { image-rendering: pixelated; }
.vgen-gallery img { min-width: 192px; min-height: 192px; }
"""

# --------------------------------------------------------------------------------------------
# ZeroGPU: on a ZeroGPU Space the engine call runs inside @spaces.GPU; elsewhere nothing changes.
# --------------------------------------------------------------------------------------------

ZERO_GPU = False
if os.environ.get("SPACES_ZERO_GPU"):
    try:
        import spaces  # noqa: F401  (must be imported before CUDA is initialised)

        ZERO_GPU = True
    except ImportError:  # the variable is set but the package is missing: run as usual
        ZERO_GPU = False


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        logger.warning("ignoring %s=%r: not a number", name, raw)
        return None
    return value if value > 0 else None


DEFAULT_JOB_TIME_LIMIT_S = 300.0


def _time_limit_s() -> float | None:
    """Seconds a job may spend on its own work (encode, denoise; the clock starts when the model
    is loaded, see ``JobControl.restart``). Unset: 300 s; 0 (or less): no limit."""
    raw = os.environ.get("VGEN_JOB_TIME_LIMIT", "").strip()
    if not raw:
        return DEFAULT_JOB_TIME_LIMIT_S
    return _env_float("VGEN_JOB_TIME_LIMIT")


def _engine_call(kind: str, request: GenerateRequest, control) -> tuple[Any, list[str]]:
    """The engine work of one job (what runs on the GPU): generate or edit, plus the model's
    vocabulary when the prompt had unknown words. ``inspect`` (Features tab): a generate or edit
    that also records attention maps and the denoising path; its result is an ``Inspection``."""
    if kind == "inspect":
        from vgen.attention import inspect_generation

        out = inspect_generation(request, control=control, maps=True, path=True)
        return out, out.result.extras.get("known_words", [])
    if kind == "generate":
        from vgen.generate import generate

        result = generate(request, control=control)
    else:
        from vgen.edit import edit

        result = edit(request, control=control)
    return result, result.extras.get("known_words", [])


def _gpu_engine_call(kind: str, request: GenerateRequest, time_limit_s: float | None):
    """ZeroGPU runs this in a forked process and pickles its arguments, so it gets the request
    only; progress and Stop cannot reach into that process (its ``duration`` bounds the job)."""
    from vgen.jobs import JobControl

    return _engine_call(kind, request, JobControl(time_limit_s=time_limit_s))


if ZERO_GPU:
    _gpu_engine_call = spaces.GPU(duration=int(_env_float("VGEN_GPU_DURATION") or 120))(
        _gpu_engine_call
    )

# --------------------------------------------------------------------------------------------
# Strict inputs: an API caller may send any JSON for any field. Gradio's own preprocess crashes
# on some wrong types (a string for a whole-number field) with a message that says nothing, and
# silently accepts others (a string for a checkbox). These say which field and what it takes.
# Bounds are not checked here: the engine's (vgen.requests.check_inputs) are the defence.
# --------------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(component, payload: Any, kind: str):
    raise gr.Error(f"{component.label or 'a field'} must be {kind}, got {_shown(payload)}",
                   print_exception=False)


def _strict_number(component, payload: Any, whole: bool):
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        return None
    kind = "a whole number" if whole else "a number"
    if isinstance(payload, str):
        try:
            payload = float(payload)
        except ValueError:
            _refuse(component, payload, kind)
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        _refuse(component, payload, kind)
    if isinstance(payload, float) and not math.isfinite(payload):  # NaN, infinity
        _refuse(component, payload, "a finite number")
    if whole:
        if payload != int(payload):
            _refuse(component, payload, kind)
        return int(payload)
    return float(payload)


class StrictNumber(gr.Number):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        return _strict_number(self, payload, whole=self.precision == 0)


class StrictSlider(gr.Slider):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        return _strict_number(self, payload, whole=False)


class StrictCheckbox(gr.Checkbox):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        if payload is None or isinstance(payload, bool):
            return payload
        _refuse(self, payload, "true or false")


class StrictTextbox(gr.Textbox):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        if payload is None or isinstance(payload, str):
            return payload
        _refuse(self, payload, "text")


class StrictDropdown(gr.Dropdown):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        if payload is not None and not isinstance(payload, str):
            _refuse(self, payload, "text")
        return super().preprocess(payload)

# --------------------------------------------------------------------------------------------
# Model picker
# --------------------------------------------------------------------------------------------

T2I_TASKS = ("txt2img",)
EDIT_TASKS = EDIT_MODES


def _is_cached(ref: str) -> bool:
    try:
        from vgen import hub

        return bool(hub.is_cached(ref))
    except Exception:
        return False


def model_choices(tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    """(label, reference) pairs: the default model, then the curated models for ``tasks``;
    each label says whether the model is already on this machine."""
    default = default_model()
    refs = [default] + [e.ref for e in CATALOG if set(e.tasks) & set(tasks) and e.ref != default]
    choices = []
    for ref in refs:
        entry = entry_for(ref)
        name = entry.label if entry is not None else ref
        if ref == default:
            name += " · default"
        name += " · ✓ cached" if _is_cached(ref) else " · ⤓ downloads on first use"
        choices.append((name, ref))
    return choices


def _model_dropdown(tasks: tuple[str, ...]) -> gr.Dropdown:
    return StrictDropdown(
        choices=model_choices(tasks), value=default_model(), allow_custom_value=True,
        label="Model",
        info="Pick one, or type a Hub repo id (org/name[@revision]) or a local model folder.",
    )


def refresh_model_choices():
    """New cache marks for both pickers (after a download, on page load)."""
    return gr.update(choices=model_choices(T2I_TASKS)), gr.update(choices=model_choices(EDIT_TASKS))

# --------------------------------------------------------------------------------------------
# UI values -> typed requests
# --------------------------------------------------------------------------------------------


def _opt_int(value: Any, name: str) -> int | None:
    """None (an empty field) means the model's default; numbers become ints."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
        whole = int(number)
    except (TypeError, ValueError, OverflowError):  # text, NaN, infinity
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}") from None
    if number != whole:
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}")
    return whole


def _opt_float(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}") from None


def _ui_default(value: Any) -> Any:
    """UI number fields: the browser shows an empty gr.Number as 0 and sends 0, so in the UI
    (only) 0 means "model default" for steps, guidance and size. (Guidance <= 1 turns
    classifier-free guidance off in diffusers, so 1 still gives "no guidance".) The API keeps
    None for "default", and 0 there is an error."""
    return None if value is None or value == 0 else value


def _common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                   num_images, scheduler) -> dict:
    n = _opt_int(num_images, "number of images")
    return dict(
        prompt=prompt if prompt is not None else "",
        negative_prompt=negative_prompt if negative_prompt is not None else "",
        model=(model or "").strip() or None,
        steps=_opt_int(steps, "steps"),
        guidance=_opt_float(guidance, "guidance"),
        seed=None if randomize_seed else _opt_int(seed, "seed"),
        num_images=1 if n is None else n,
        scheduler=None if not scheduler or scheduler == DEFAULT_SCHEDULER else scheduler,
    )


def generate_request(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                     width, height, num_images, scheduler) -> GenerateRequest:
    return GenerateRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=_opt_int(width, "width"), height=_opt_int(height, "height"),
    )


def edit_request(image, mask, prompt, mode, strength, image_guidance, negative_prompt, model,
                 steps, guidance, seed, randomize_seed, width, height, num_images,
                 scheduler) -> EditRequest:
    s = _opt_float(strength, "strength")
    ig = _opt_float(image_guidance, "image guidance")
    return EditRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=_opt_int(width, "width"), height=_opt_int(height, "height"),
        image=image, mask=mask, mode=mode or "img2img",
        strength=0.75 if s is None else s, image_guidance=1.5 if ig is None else ig,
    )


# Notices about the input images of the job running in this context (e.g. "the image is
# animated; its first frame was used"). Each job's worker runs in its own context copy.
_INPUT_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "vgen_input_notes", default=None)


def _note(*notes: str) -> None:
    sink = _INPUT_NOTES.get()
    if sink is not None:
        sink.extend(n for n in notes if n not in sink)


def _load(path: str | None, kind: str = "image"):
    """A checked, normalised image from an uploaded file (None stays None); what the checks
    noticed (first frame of an animation, unreadable EXIF) goes to the job's notice."""
    if not path:
        return None
    from vgen.images import normalise, open_image

    image, notes = normalise(open_image(str(path)), kind)
    _note(*notes)
    return image


def editor_image_and_mask(editor: dict | None, mode: str):
    """Source image and inpainting mask from a gr.ImageEditor value (file paths).

    Inpainting repaints the background wherever any brush layer is painted (any alpha); the
    other modes edit the composite, so brush strokes act as a sketch on the picture."""
    if not editor:
        return None, None
    _note(*(editor.get("notes") or []))  # found by SafeImageEditor when the upload came in
    background, composite = editor.get("background"), editor.get("composite")
    if mode == "inpaint":
        source = _load(background or composite)
    else:
        source = _load(composite or background)
    mask = None
    if mode == "inpaint":
        from PIL import ImageChops

        for layer in editor.get("layers") or []:
            alpha = _load(layer, kind="mask")  # RGBA layers give their alpha channel
            mask = alpha if mask is None else ImageChops.lighter(mask, alpha.resize(mask.size))
        if mask is not None:
            mask = mask.point(lambda v: 255 if v > 0 else 0)
            if mask.getbbox() is None:  # nothing painted
                mask = None
    return source, mask

# --------------------------------------------------------------------------------------------
# The image editor: uploads are checked by vgen.images before Gradio decodes them
# --------------------------------------------------------------------------------------------

MAX_EDITOR_LAYERS = 16  # brush layers one edit may carry
MAX_PENDING_BLOBS = 32  # editor states sent ahead with accept_blobs and not yet used
_EDITOR_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "vgen_editor_notes", default=None)


class SafeImageEditor(gr.ImageEditor):
    """``gr.ImageEditor`` whose images go through ``vgen.images`` first.

    Gradio's own ``preprocess`` opens every background, layer and composite with any format
    PIL knows and converts it, so a decompression bomb or an odd format would be decoded before
    the engine sees it. Here the format allow-list and the pixel cap are checked from the header
    first; the picture (background, composite) is made upright, first frame, RGB on white (what
    the engine does to any input) and saved as PNG, layers keep their alpha; the notices (an
    animation's first frame) travel in the value's ``"notes"``. ``accept_blobs`` (a server
    function any client can call) is bounded: known kinds only, at most ``MAX_EDITOR_LAYERS``
    layers, at most ``MAX_PENDING_BLOBS`` pending editor states (oldest dropped).
    """

    is_template = True  # drawn by the browser as gr.ImageEditor

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        if file is None:
            return None
        from gradio import image_utils
        from gradio.data_classes import FileData

        from vgen.images import normalise, open_image

        source = file.path if isinstance(file, FileData) else bytes(file)
        try:
            image = open_image(source)
            if flatten_on_white:  # background / composite: the picture
                image, notes = normalise(image)
                sink = _EDITOR_NOTES.get()
                if sink is not None:
                    sink.extend(n for n in notes if n not in sink)
            else:  # a brush layer: where it is painted is its alpha
                image = image.convert("RGBA")
        except VgenError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return image_utils.format_image(image, self.type, self.GRADIO_CACHE, name="image",
                                        format="png")

    def preprocess(self, payload):
        notes: list[str] = []
        token = _EDITOR_NOTES.set(notes)
        try:
            value = super().preprocess(payload)
        finally:
            _EDITOR_NOTES.reset(token)
        if value is not None and notes:
            value["notes"] = notes
        return value

    @gr.components.base.server
    def accept_blobs(self, data):
        from fastapi import HTTPException

        fields = data.data if isinstance(getattr(data, "data", None), dict) else {}
        kind, index = fields.get("type"), fields.get("index")
        if kind not in ("background", "composite", "layer") or not data.files:
            raise HTTPException(400, "accept_blobs takes one background, composite or layer file")
        if kind == "layer" and index not in (None, "", "null"):
            try:
                number = int(index)
            except (TypeError, ValueError):
                raise HTTPException(400, f"layer index must be a number, got {index!r}") from None
            if not 0 <= number < MAX_EDITOR_LAYERS:
                raise HTTPException(400, f"layer index must be from 0 to {MAX_EDITOR_LAYERS - 1}")
        storage = self.blob_storage
        while len(storage) >= MAX_PENDING_BLOBS and fields.get("id") not in storage:
            try:
                storage.pop(next(iter(storage)))
            except (StopIteration, KeyError, RuntimeError):  # another thread got there first
                break
        return super().accept_blobs(data)


class SafeImage(gr.Image):
    """``gr.Image`` whose upload passes ``vgen.images``' checks (format allow-list, pixel cap
    read from the header) before Gradio's own ``preprocess`` decodes it. Use it, not
    ``gr.Image``, for every image a user can upload."""

    is_template = True  # drawn by the browser as gr.Image

    def preprocess(self, payload):
        path = getattr(payload, "path", None)
        if path:
            from vgen.images import open_image

            try:
                open_image(path)
            except VgenError as e:
                raise gr.Error(str(e), print_exception=False) from None
        return super().preprocess(payload)


# --------------------------------------------------------------------------------------------
# Jobs: the engine in a worker thread, progress and cancel
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One user's engine run. Written by the worker thread, read by the waiting handler."""

    kind: str
    control: Any = None
    step: tuple[int, int] | None = None
    download: Any = None  # the latest vgen.hub.DownloadProgress
    result: Any = None
    known: list[str] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the input images
    error: BaseException | None = None

    def on_step(self, step: int, total: int) -> None:
        self.step = (step, total)

    def on_download(self, progress) -> None:
        self.download = progress
        self.control.check()  # raising here stops the download on Stop / time limit

    def snapshot(self) -> tuple:
        if self.step is not None:
            return ("denoise", self.step)
        if self.download is not None:
            d = self.download
            return ("download", (d.files_done, d.files_total, d.bytes_done, d.bytes_total))
        return ("load", None)


def _cache_dir() -> Path:
    """Gradio's upload/cache folder: files returned from there are served as they are."""
    try:
        from gradio.utils import get_upload_folder

        return Path(get_upload_folder())
    except Exception:
        return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def _save_images(result) -> list[tuple[str, str]]:
    """PNG files that keep the ``parameters`` text chunk, with a caption giving the seed."""
    from vgen.metadata import png_bytes

    out = []
    for image, seed in zip(result.images, result.seeds):
        data = png_bytes(image)
        folder = _cache_dir() / ("vgen-" + hashlib.sha256(data).hexdigest()[:32])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"vgen-seed{seed}.png"
        path.write_bytes(data)
        out.append((str(path), f"seed {seed}"))
    return out


def _worker(job: _Job, build: Callable[[], GenerateRequest]) -> None:
    _INPUT_NOTES.set(job.notes)  # this thread runs in the job's own context copy
    try:
        request = build()  # image decoding happens here, off the event loop
        if ZERO_GPU:
            job.result, job.known = _gpu_engine_call(job.kind, request, job.control.time_limit_s)
        else:
            job.result, job.known = _engine_call(job.kind, request, job.control)
        job.files = _save_images(job.result.result if job.kind == "inspect" else job.result)
    except BaseException as e:  # handed to the handler, which turns it into gr.Error
        job.error = e


def _ui_error(e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (VgenError, ValueError)):
        return gr.Error(str(e), print_exception=False)
    logger.error("unexpected error in a job", exc_info=(type(e), e, e.__traceback__))
    text = str(e)
    text = text[:300] + "…" if len(text) > 300 else text
    return gr.Error(f"unexpected error ({type(e).__name__}): {text}")


def _report(progress, snap: tuple) -> None:
    phase, data = snap
    if phase == "denoise":
        progress(data, desc="denoising", unit="steps")
    elif phase == "download":
        files_done, files_total, bytes_done, bytes_total = data
        mb = f"{bytes_done / 1e6:.1f}" + (f" / {bytes_total / 1e6:.1f}" if bytes_total else "")
        desc = f"downloading the model: {mb} MB, {files_done}/{files_total} files"
        if bytes_total:
            progress(min(1.0, bytes_done / bytes_total), desc=desc)
        else:  # the Hub did not give sizes: count files
            progress((files_done, files_total), desc=desc, unit="files")
    else:
        progress(0.0, desc="loading the model")


def _skip(n: int) -> tuple:
    return tuple(gr.skip() for _ in range(n))


def _outputs(job: _Job, started: float) -> tuple:
    """Gallery (file, caption) pairs, the info line and the vocabulary notice."""
    r = job.result
    req = r.request
    seeds = ", ".join(str(s) for s in r.seeds)
    task = getattr(req, "mode", "txt2img")
    info = (
        f"**{r.model}** · revision `{r.revision[:12]}` · {task} · {r.sampler} · "
        f"{req.width}×{req.height} · {req.steps} steps · guidance {req.guidance:g} · "
        f"seed{'s' if len(r.seeds) > 1 else ''} {seeds} · {time.perf_counter() - started:.1f} s"
    )
    notice = _vocabulary_notice(r, job.known)
    if job.notes:
        inputs = "ℹ️ " + "; ".join(n[0].upper() + n[1:] for n in job.notes) + "."
        notice = inputs + ("\n\n" + notice if notice else "")
    return job.files, info, notice


def _vocabulary_notice(result, known: list[str]) -> str:
    unknown = result.extras.get("unknown_words") or []
    if not unknown:
        return ""
    text = (
        f"⚠️ **{result.model} does not know the words:** "
        + ", ".join(f"`{w}`" for w in unknown) + " — they were ignored."
    )
    if known:
        text += "\n\nIt knows: " + " ".join(known) + ".\n\n" + HUB_POINTER
    return text


async def _run_job(kind: str, build: Callable[[], GenerateRequest], progress, n_outputs: int = 3,
                   finish: Callable[[_Job, float], tuple] | None = None):
    """Run the engine for one request in a worker thread; yield no-op updates while waiting and
    the outputs at the end (``finish(job, started)``, default ``_outputs``). Closing or
    cancelling this generator cancels the job and waits for it to stop."""
    from vgen.jobs import JobControl

    job = _Job(kind)
    job.control = JobControl(progress=job.on_step, download=job.on_download,
                             time_limit_s=_time_limit_s())
    ctx = contextvars.copy_context()  # Gradio's (and ZeroGPU's) request context
    thread = threading.Thread(target=ctx.run, args=(_worker, job, build),
                              name=f"vgen-{kind}", daemon=True)
    started = time.perf_counter()
    thread.start()
    logger.info("%s job started", kind)
    try:
        shown, last_yield = None, time.monotonic()
        while thread.is_alive():
            snap = job.snapshot()
            if snap != shown:
                _report(progress, snap)
                shown = snap
            if time.monotonic() - last_yield >= YIELD_EVERY_S:
                yield _skip(n_outputs)  # here Gradio stops a job whose client went away
                last_yield, shown = time.monotonic(), None  # and the bar is shown again at once
                continue
            await asyncio.sleep(POLL_S)
    finally:
        if thread.is_alive():  # cancelled (Stop), closed (client gone) or failed while waiting
            job.control.cancel.set()
            logger.info("%s job cancelled after %.1f s", kind, time.perf_counter() - started)
            if not ZERO_GPU:  # the engine stops within one denoising step
                while thread.is_alive():
                    await asyncio.sleep(POLL_S)
                logger.info("%s job stopped", kind)
    if job.error is not None:
        logger.info("%s job failed: %s: %s", kind, type(job.error).__name__, job.error)
        raise _ui_error(job.error)
    logger.info("%s job done in %.1f s", kind, time.perf_counter() - started)
    yield (finish or _outputs)(job, started)


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


async def generate_images(
    prompt: str,
    negative_prompt: str | None = None,
    model: str | None = None,
    steps: float | None = None,
    guidance: float | None = None,
    seed: float | None = 0,
    randomize_seed: bool = True,
    width: float | None = None,
    height: float | None = None,
    num_images: float = 1,
    scheduler: str = DEFAULT_SCHEDULER,
    progress=gr.Progress(),
):
    """Text to image.

    Parameters:
        prompt: what to draw
        negative_prompt: what to avoid (empty for none)
        model: Hub repo id (org/name[@revision]) or local model folder; empty for the default
        steps: denoising steps; None for the model's default
        guidance: classifier-free guidance scale; None for the model's default
        seed: seed of the first image (image i uses seed + i); ignored when randomize_seed
        randomize_seed: draw a fresh seed
        width: image width, a multiple of 8; None for the model's default
        height: image height, a multiple of 8; None for the model's default
        num_images: how many images (seeds seed, seed+1, ...)
        scheduler: "model default" or a sampler key (dpm++2m, euler, euler-a, ddim, unipc, lcm, ...)
    Returns:
        gallery of PNG files (each with its generation parameters in the "parameters" text chunk,
        caption "seed N"), an info line, and a notice listing words the model does not know
    """
    try:
        req = generate_request(prompt, negative_prompt, model, steps, guidance, seed,
                               randomize_seed, width, height, num_images, scheduler)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    async with aclosing(_run_job("generate", lambda: req, progress)) as job:
        async for out in job:  # closing this generator closes (and so cancels) the job
            yield out


async def generate_from_ui(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                           width, height, num_images, scheduler, progress=gr.Progress()):
    """The Generate button: like ``generate_images``, with 0 for "model default"."""
    async with aclosing(generate_images(
            prompt, negative_prompt, model, _ui_default(steps), _ui_default(guidance), seed,
            randomize_seed, _ui_default(width), _ui_default(height), num_images, scheduler,
            progress=progress)) as job:
        async for out in job:
            yield out


async def edit_image(
    image: str | None,
    prompt: str,
    mode: str = "img2img",
    mask: str | None = None,
    strength: float = 0.75,
    image_guidance: float = 1.5,
    negative_prompt: str | None = None,
    model: str | None = None,
    steps: float | None = None,
    guidance: float | None = None,
    seed: float | None = 0,
    randomize_seed: bool = True,
    width: float | None = None,
    height: float | None = None,
    num_images: float = 1,
    scheduler: str = DEFAULT_SCHEDULER,
    progress=gr.Progress(),
):
    """Edit an image: img2img (SDEdit), instruct (InstructPix2Pix) or inpaint (with a mask).

    Parameters:
        image: the source image file (PNG, JPEG, WebP, BMP, GIF or TIFF)
        prompt: the instruction (instruct) or a description of the result (img2img, inpaint)
        mode: img2img | instruct | inpaint
        mask: inpaint only: a mask image, white (or opaque, for RGBA) where to repaint
        strength: img2img / inpaint: how much of the schedule is re-run (0.01-1)
        image_guidance: instruct: how closely to keep the source image
        negative_prompt: what to avoid (empty for none)
        model: Hub repo id or local model folder; empty for the default (instruct needs an
            InstructPix2Pix model, e.g. vgen-shapes-edit or timbrooks/instruct-pix2pix)
        steps: denoising steps; None for the model's default
        guidance: classifier-free guidance scale; None for the model's default
        seed: seed of the first image (image i uses seed + i); ignored when randomize_seed
        randomize_seed: draw a fresh seed
        width: working width, a multiple of 8; None (with height None): the source's aspect
            at the model's native size
        height: working height, a multiple of 8; None: as for width
        num_images: how many images
        scheduler: "model default" or a sampler key
    Returns:
        gallery of PNG files with their parameters, an info line, and a vocabulary notice
    """

    def build() -> EditRequest:
        return edit_request(_load(image), _load(mask, "mask"), prompt, mode, strength,
                            image_guidance, negative_prompt, model, steps, guidance, seed,
                            randomize_seed, width, height, num_images, scheduler)

    async with aclosing(_run_job("edit", build, progress)) as job:
        async for out in job:
            yield out


async def edit_from_editor(editor, prompt, mode, strength, image_guidance, negative_prompt, model,
                           steps, guidance, seed, randomize_seed, width, height, num_images,
                           scheduler, progress=gr.Progress()):
    """The Edit button: like ``edit_image``, with the image and mask from the editor and 0 for
    "model default"."""

    def build() -> EditRequest:
        source, mask = editor_image_and_mask(editor, mode)
        return edit_request(source, mask, prompt, mode, strength, image_guidance,
                            negative_prompt, model, _ui_default(steps), _ui_default(guidance),
                            seed, randomize_seed, _ui_default(width), _ui_default(height),
                            num_images, scheduler)

    async with aclosing(_run_job("edit", build, progress)) as job:
        async for out in job:
            yield out


def restore_parameters(path: str | None):
    """Text to Image fields from the ``parameters`` chunk of a PNG made by vgen (or A1111)."""
    if not path:
        return _skip(10)
    from vgen.images import open_image
    from vgen.metadata import read_parameters, request_from_parameters

    try:
        req = request_from_parameters(read_parameters(open_image(path)))
    except (VgenError, ValueError, KeyError) as e:
        raise _ui_error(e if not isinstance(e, KeyError) else InvalidRequestError(
            f"the parameters text is incomplete ({e} is missing)")) from None
    if isinstance(req, EditRequest):
        gr.Info(f"This image was made by an edit ({req.mode}); its source image is not stored, "
                "so only the shared settings were restored.")
    return (
        req.prompt, req.negative_prompt, req.model or default_model(), req.steps, req.guidance,
        req.seed if req.seed is not None else gr.skip(), req.seed is None, req.width, req.height,
        req.scheduler or DEFAULT_SCHEDULER,
    )


def selected_index(evt: gr.SelectData):
    return evt.index


def pick_image(gallery, index):
    """The selected (else first) image of a gallery, for the editor."""
    if not gallery:
        raise gr.Error("There is no result to edit yet: generate an image first.",
                       print_exception=False)
    i = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    item = gallery[i]
    return item[0] if isinstance(item, (tuple, list)) else item


def send_to_edit(gallery, index):
    return pick_image(gallery, index), gr.Tabs(selected="edit")


def on_mode_change(mode: str, model: str | None):
    """Show the slider that matters for the mode; swap an unsuitable curated model."""
    entry = entry_for((model or "").strip() or default_model())
    new_model = gr.skip()
    if entry is not None:
        if mode == "instruct" and "instruct" not in entry.tasks:
            new_model = EMBEDDED_EDIT_MODEL
        elif mode != "instruct" and entry.tasks == ("instruct",):
            new_model = default_model()
    return (new_model, gr.update(visible=mode != "instruct"),
            gr.update(visible=mode == "instruct"))

# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass
class TextToImageTab:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    model: gr.Dropdown
    steps: gr.Number
    guidance: gr.Number
    seed: gr.Number
    randomize_seed: gr.Checkbox
    width: gr.Number
    height: gr.Number
    num_images: gr.Number
    scheduler: gr.Dropdown
    generate: gr.Button
    stop: gr.Button
    gallery: gr.Gallery
    selected: gr.State
    send_to_edit: gr.Button
    info: gr.Markdown
    notice: gr.Markdown
    restore_file: gr.File
    event: Any = None
    inspect: Any = None  # "Inspect in Features"


@dataclass
class EditTab:
    editor: gr.ImageEditor
    prompt: gr.Textbox
    mode: gr.Radio
    strength: gr.Slider
    image_guidance: gr.Slider
    negative_prompt: gr.Textbox
    model: gr.Dropdown
    steps: gr.Number
    guidance: gr.Number
    seed: gr.Number
    randomize_seed: gr.Checkbox
    width: gr.Number
    height: gr.Number
    num_images: gr.Number
    scheduler: gr.Dropdown
    edit: gr.Button
    stop: gr.Button
    gallery: gr.Gallery
    selected: gr.State
    reuse: gr.Button
    info: gr.Markdown
    notice: gr.Markdown
    api_image: gr.File
    api_mask: gr.File
    inspect: gr.Button  # -> the Features tab, with this edit's attention maps
    event: Any = None


def _scheduler_choices() -> list[str]:
    from vgen.schedulers import SCHEDULERS

    return [DEFAULT_SCHEDULER, *SCHEDULERS]


def _limits() -> Limits:
    try:
        return Limits.from_env()
    except VgenError as e:
        logger.warning("%s; using the default limits for the UI hints", e)
        return Limits()


def _gallery(label: str, elem_id: str) -> gr.Gallery:
    return gr.Gallery(
        label=label, elem_id=elem_id, elem_classes=["vgen-gallery", "vgen-pixelated"],
        columns=2, height=560, object_fit="contain", format="png", type="filepath",
        interactive=False, buttons=["download", "fullscreen"],
    )


def build_text_to_image_tab() -> TextToImageTab:
    lim = _limits()
    with gr.Tab("Text to Image", id="t2i"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                prompt = StrictTextbox(label="Prompt", lines=2, autofocus=True,
                                    placeholder=EXAMPLE_PROMPTS[0])
                negative = StrictTextbox(label="Negative prompt", lines=1,
                                      placeholder="what to avoid (optional)")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                model = _model_dropdown(T2I_TASKS)
                with gr.Accordion("Settings · 0 = the model's default", open=True):
                    with gr.Row():
                        steps = StrictNumber(label="Steps", value=None, precision=0)
                        guidance = StrictNumber(label="Guidance", value=None, step=0.5)
                    with gr.Row():
                        width = StrictNumber(label="Width", value=None, precision=0, step=8)
                        height = StrictNumber(label="Height", value=None, precision=0, step=8)
                    with gr.Row():
                        seed = StrictNumber(label="Seed", value=0, precision=0)
                        randomize = StrictCheckbox(label="Randomize seed", value=True)
                    with gr.Row():
                        num_images = StrictNumber(label=f"Images (1-{lim.max_images})", value=1,
                                               precision=0)
                        scheduler = StrictDropdown(label="Scheduler", choices=_scheduler_choices(),
                                                value=DEFAULT_SCHEDULER)
                with gr.Accordion("Restore parameters from a vgen PNG", open=False):
                    restore_file = gr.File(label="Drop a PNG made by vgen", file_types=[".png"],
                                           type="filepath")
            with gr.Column(scale=6):
                gallery = _gallery("Results", "t2i-gallery")
                selected = gr.State(None)
                send = gr.Button("Send to Edit", size="sm")
                inspect_button = gr.Button("Inspect in Features", size="sm")
                info = gr.Markdown(label="info", elem_id="t2i-info")
                notice = gr.Markdown(label="notice", elem_id="t2i-notice")
        gr.Examples(examples=[[p] for p in EXAMPLE_PROMPTS], inputs=[prompt],
                    label="Shapes-world prompts for the built-in model", cache_examples=False,
                    api_visibility="private")
        gr.Markdown(HUB_POINTER)
    return TextToImageTab(prompt, negative, model, steps, guidance, seed, randomize, width,
                          height, num_images, scheduler, generate, stop, gallery, selected, send,
                          info, notice, restore_file, inspect=inspect_button)


def build_edit_tab() -> EditTab:
    lim = _limits()
    with gr.Tab("Edit", id="edit"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                editor = SafeImageEditor(
                    label="Image (inpaint: paint where to repaint)", type="filepath",
                    format="png", sources=["upload", "clipboard"], height=520,
                    elem_id="edit-editor", elem_classes=["vgen-pixelated"],
                    brush=gr.Brush(colors=["#ffffff", "#ff3df5", "#000000"],
                                   default_color="#ff3df5", color_mode="defaults"),
                )
                prompt = StrictTextbox(label="Instruction / prompt", lines=2,
                                    placeholder="img2img / inpaint: describe the result; "
                                    "instruct: say what to change")
                mode = gr.Radio(choices=list(EDIT_MODES), value="img2img", label="Mode",
                                info="img2img redraws the whole picture; inpaint repaints only "
                                "the painted area; instruct follows an instruction")
                with gr.Row():
                    edit = gr.Button("Edit", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                model = _model_dropdown(EDIT_TASKS)
                with gr.Accordion("Settings · 0 = the model's default (size: the source's "
                                  "aspect)", open=True):
                    strength = StrictSlider(0.01, 1.0, value=0.75, step=0.01, label="Strength",
                                         info="how much of the image is redrawn")
                    image_guidance = StrictSlider(0.0, 10.0, value=1.5, step=0.1,
                                               label="Image guidance", visible=False,
                                               info="how closely to keep the source image")
                    with gr.Row():
                        steps = StrictNumber(label="Steps", value=None, precision=0)
                        guidance = StrictNumber(label="Guidance", value=None, step=0.5)
                    with gr.Row():
                        seed = StrictNumber(label="Seed", value=0, precision=0)
                        randomize = StrictCheckbox(label="Randomize seed", value=True)
                    with gr.Row():
                        width = StrictNumber(label="Width", value=None, precision=0, step=8)
                        height = StrictNumber(label="Height", value=None, precision=0, step=8)
                    negative = StrictTextbox(label="Negative prompt", lines=1)
                    with gr.Row():
                        num_images = StrictNumber(label=f"Images (1-{lim.max_images})", value=1,
                                               precision=0)
                        scheduler = StrictDropdown(label="Scheduler", choices=_scheduler_choices(),
                                                value=DEFAULT_SCHEDULER)
            with gr.Column(scale=6):
                gallery = _gallery("Edited", "edit-gallery")
                selected = gr.State(None)
                with gr.Row():
                    reuse = gr.Button("Edit this result further", size="sm")
                    inspect = gr.Button("Inspect this edit → Features", size="sm")
                info = gr.Markdown(label="info", elem_id="edit-info")
                notice = gr.Markdown(label="notice", elem_id="edit-notice")
        # Inputs of the /edit API endpoint only: a plain image file and an optional mask file.
        api_image = gr.File(label="image", visible=False, type="filepath")
        api_mask = gr.File(label="mask", visible=False, type="filepath")
    return EditTab(editor, prompt, mode, strength, image_guidance, negative, model, steps,
                   guidance, seed, randomize, width, height, num_images, scheduler, edit, stop,
                   gallery, selected, reuse, info, notice, api_image, api_mask, inspect)


def _wire_text_to_image(t: TextToImageTab) -> None:
    inputs = [t.prompt, t.negative_prompt, t.model, t.steps, t.guidance, t.seed,
              t.randomize_seed, t.width, t.height, t.num_images, t.scheduler]
    outputs = [t.gallery, t.info, t.notice]
    t.event = gr.on(
        triggers=[t.generate.click, t.prompt.submit], fn=generate_from_ui, inputs=inputs,
        outputs=outputs, api_visibility="private", concurrency_id=ENGINE_CONCURRENCY_ID,
        trigger_mode="once", show_progress_on=t.gallery,
    )
    t.stop.click(fn=None, cancels=[t.event])
    # The API endpoint: the same fields with None (not 0) for "model default". A hidden button
    # carries it; gradio_client calls it by name and cancels it with job.cancel().
    api_button = gr.Button(visible=False)
    api_button.click(generate_images, inputs, outputs, api_name="generate",
                     concurrency_id=ENGINE_CONCURRENCY_ID, show_progress_on=t.gallery)
    t.gallery.select(selected_index, None, t.selected, api_visibility="private",
                     concurrency_limit=None)
    t.gallery.change(lambda: None, None, t.selected, api_visibility="private",
                     concurrency_limit=None)
    t.restore_file.upload(
        restore_parameters, t.restore_file,
        [t.prompt, t.negative_prompt, t.model, t.steps, t.guidance, t.seed, t.randomize_seed,
         t.width, t.height, t.scheduler],
        api_visibility="private", concurrency_limit=None,
    )


def _wire_edit(e: EditTab) -> None:
    shared = [e.prompt, e.mode, e.strength, e.image_guidance, e.negative_prompt, e.model,
              e.steps, e.guidance, e.seed, e.randomize_seed, e.width, e.height, e.num_images,
              e.scheduler]
    outputs = [e.gallery, e.info, e.notice]
    e.event = e.edit.click(
        edit_from_editor, [e.editor, *shared], outputs, api_visibility="private",
        concurrency_id=ENGINE_CONCURRENCY_ID, trigger_mode="once", show_progress_on=e.gallery,
    )
    e.stop.click(fn=None, cancels=[e.event])
    # The API endpoint: the same settings, with an image file and a mask file instead of the
    # editor. A hidden button carries it; gradio_client calls it by name.
    api_button = gr.Button(visible=False)
    api_button.click(
        edit_image,
        [e.api_image, e.prompt, e.mode, e.api_mask, e.strength, e.image_guidance,
         e.negative_prompt, e.model, e.steps, e.guidance, e.seed, e.randomize_seed,
         e.width, e.height, e.num_images, e.scheduler],
        outputs, api_name="edit", concurrency_id=ENGINE_CONCURRENCY_ID,
        show_progress_on=e.gallery,
    )
    e.mode.change(on_mode_change, [e.mode, e.model], [e.model, e.strength, e.image_guidance],
                  api_visibility="private", concurrency_limit=None)
    e.gallery.select(selected_index, None, e.selected, api_visibility="private",
                     concurrency_limit=None)
    e.gallery.change(lambda: None, None, e.selected, api_visibility="private",
                     concurrency_limit=None)
    e.reuse.click(pick_image, [e.gallery, e.selected], e.editor, api_visibility="private",
                  concurrency_limit=None)


# --------------------------------------------------------------------------------------------
# Features tab: attention maps, denoising path and feature maps (vgen.attention, vgen.features)
# --------------------------------------------------------------------------------------------

FEATURE_BACKBONES = ("vgg16", "unet", "vae")


@dataclass
class Inspected:
    """What one Inspect run left for re-rendering (kept per session in a ``gr.State``)."""

    maps: Any  # vgen.attention.AttentionMaps
    image: Any  # PIL image the maps belong to
    path: str  # the image's PNG file (with its generation parameters)


def inspect_request(prompt, model, seed, steps, negative_prompt=None) -> GenerateRequest:
    """A text-to-image request for the Features tab (seed None: a fresh one)."""
    return GenerateRequest(prompt=prompt if prompt is not None else "",
                           negative_prompt=negative_prompt if negative_prompt is not None else "",
                           model=(model or "").strip() or None, seed=_opt_int(seed, "seed"),
                           steps=_opt_int(steps, "steps"))


def word_choices(maps, include_special: bool = False) -> list[tuple[str, str]]:
    """(label, key) pairs for the word picker: the word, or the key when a word repeats."""
    keys = maps.word_keys()
    if include_special:
        extra = [k for k in maps.keys(True) if k not in maps.keys(False)]
        keys = [k for k in extra if k.startswith("-1:")] + keys + \
               [k for k in extra if not k.startswith("-1:")]
    words = [k.split(":", 1)[1] for k in keys]
    return [(w if words.count(w) == 1 else k, k) for w, k in zip(words, keys)]


def _filters(first, last, resolutions) -> dict:
    a, b = int(first or 0), int(last or 0)
    return dict(step_range=(min(a, b), max(a, b)),
                resolutions=list(resolutions) if resolutions else None)


def _default_word(maps) -> str | None:
    keys = maps.word_keys()
    return keys[-1] if keys else None  # the last word is usually the noun


def render_maps(state: Inspected | None, key, first, last, resolutions, opacity):
    """Overlay of the chosen word and the small-multiples grid, from the stored maps."""
    if state is None:
        return None, None
    try:
        filters = _filters(first, last, resolutions)
        grid = state.maps.grid(state.image, opacity=float(opacity), **filters)
        overlay = (state.maps.overlay(state.image, key, float(opacity), **filters)
                   if key else None)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    return overlay, grid


def update_word_choices(state: Inspected | None, include_special: bool, key):
    if state is None:
        return gr.skip()
    choices = word_choices(state.maps, bool(include_special))
    keys = [k for _, k in choices]
    return gr.update(choices=choices, value=key if key in keys else _default_word(state.maps))


def mask_editor_value(image, mask) -> dict:
    """An ImageEditor value: ``image`` as the background and one layer that is opaque white
    where ``mask`` is 255 (transparent elsewhere), as PNG files in Gradio's cache folder;
    ``editor_image_and_mask(value, "inpaint")`` gives back the image and the mask."""
    from PIL import Image

    background = image.convert("RGB")
    mask = mask.convert("L").resize(background.size, Image.NEAREST)
    layer = Image.new("RGBA", background.size, (255, 255, 255, 0))
    layer.putalpha(mask.point(lambda v: 255 if v > 127 else 0))
    composite = background.copy()
    composite.paste(Image.new("RGB", background.size, "white"), mask=layer.getchannel("A"))
    folder = Path(tempfile.mkdtemp(prefix="vgen-mask-", dir=_cache_dir()))
    paths = {}
    for name, im in (("background", background), ("layer", layer), ("composite", composite)):
        paths[name] = str(folder / f"{name}.png")
        im.save(paths[name], format="PNG")
    return {"background": paths["background"], "layers": [paths["layer"]],
            "composite": paths["composite"]}


def use_as_mask(state: Inspected | None, key, threshold, first, last, resolutions):
    """The chosen word's map, thresholded, as an inpainting mask on the image in the Edit tab."""
    if state is None or not key:
        raise gr.Error("Inspect an image and pick a word first.", print_exception=False)
    try:
        mask = state.maps.to_mask(key, float(threshold), **_filters(first, last, resolutions))
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    if mask.getbbox() is None:
        raise gr.Error("The mask is empty at this threshold: lower it.", print_exception=False)
    return mask_editor_value(state.image, mask), "inpaint", gr.Tabs(selected="edit")


def _inspected(job: _Job) -> tuple[Inspected, Any, Any, list[str]]:
    """(state, grid, filmstrip, word keys) of a finished inspect job."""
    from vgen.denoising import filmstrip

    out = job.result
    image = out.result.images[0]
    maps = out.maps
    state = Inspected(maps, image, job.files[0][0])
    grid = maps.grid(image)
    strip = filmstrip(out.path[0]) if out.path else None
    return state, grid, strip, maps.word_keys()


async def inspect_attention(prompt: str, model: str | None = None, seed: float | None = 0,
                            steps: float | None = None, negative_prompt: str | None = None,
                            progress=gr.Progress()):
    """Text to image with its per-word cross-attention maps and its denoising path.

    Parameters:
        prompt: what to draw
        model: Hub repo id (org/name[@revision]) or local model folder; empty for the default
        seed: the seed; None for a fresh one
        steps: denoising steps; None for the model's default
        negative_prompt: what to avoid (empty for none)
    Returns:
        the image (PNG with its parameters), a grid with the image and one attention overlay per
        word, the denoising filmstrip (the predicted clean image after each step), and the word
        keys ("<index>:<word>")
    """
    try:
        req = inspect_request(prompt, model, seed, steps, negative_prompt)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None

    def finish(job: _Job, started: float) -> tuple:
        state, grid, strip, keys = _inspected(job)
        return state.path, grid, strip, keys

    async with aclosing(_run_job("inspect", lambda: req, progress, 4, finish)) as job:
        async for out in job:
            yield out


def _features_outputs(include_special, opacity) -> Callable[[_Job, float], tuple]:
    """The ``finish`` of an Inspect job: every output of the Features tab."""

    def finish(job: _Job, started: float) -> tuple:
        state, grid, strip, _ = _inspected(job)
        maps, n = state.maps, state.maps.num_steps
        key = _default_word(maps)
        overlay = maps.overlay(state.image, key, float(opacity)) if key else None
        res = [f"{h}x{w}" for h, w in maps.resolutions]
        r = job.result.result
        task = getattr(r.request, "mode", "txt2img")
        info = (f"**{r.model}** · {task} · seed {r.seeds[0]} · {n} steps · "
                f"attention at {', '.join(res)} · {time.perf_counter() - started:.1f} s")
        return (state.path, grid, strip, state,
                gr.update(choices=word_choices(maps, bool(include_special)), value=key),
                gr.update(maximum=max(1, n - 1), value=0, interactive=n > 1),
                gr.update(maximum=max(1, n - 1), value=n - 1, interactive=n > 1),
                gr.update(choices=res, value=res), overlay, info)

    return finish


async def inspect_from_ui(prompt, negative_prompt, model, seed, steps, include_special, opacity,
                          progress=gr.Progress()):
    """The Inspect button: 0 steps = the model's default; fills every Features output."""
    try:
        req = inspect_request(prompt, model, seed, _ui_default(steps), negative_prompt)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    finish = _features_outputs(include_special, opacity)
    async with aclosing(_run_job("inspect", lambda: req, progress, 10, finish)) as job:
        async for out in job:
            yield out


async def inspect_edit_from_ui(editor, prompt, mode, strength, image_guidance, negative_prompt,
                               model, steps, guidance, seed, randomize_seed, width, height,
                               scheduler, include_special, opacity, progress=gr.Progress()):
    """The Edit tab's "Inspect this edit": the edit as set up there (any mode, one image), with
    its per-word attention maps and denoising path shown in the Features tab."""

    def build() -> EditRequest:
        source, mask = editor_image_and_mask(editor, mode)
        return edit_request(source, mask, prompt, mode, strength, image_guidance,
                            negative_prompt, model, _ui_default(steps), _ui_default(guidance),
                            seed, randomize_seed, _ui_default(width), _ui_default(height),
                            1, scheduler)

    finish = _features_outputs(include_special, opacity)
    async with aclosing(_run_job("inspect", build, progress, 10, finish)) as job:
        async for out in job:
            yield out


def show_features(image_path, backbone, model, prompt):
    """Feature views of an image: (image, caption) pairs, a PCA view and the strongest
    channels per layer."""
    from vgen.features import extract

    if not image_path:
        raise gr.Error("Add an image first (or use the inspected one).", print_exception=False)
    if backbone not in FEATURE_BACKBONES:
        raise gr.Error(f"backbone must be one of {', '.join(FEATURE_BACKBONES)}",
                       print_exception=False)
    kwargs = {}
    if backbone in ("unet", "vae"):
        kwargs["model"] = (model or "").strip() or None
    if backbone == "unet":
        kwargs["prompt"] = prompt or ""
    try:
        fm = extract(_load(image_path), backbone, **kwargs)
        views = fm.views()
    except Exception as e:  # VGG16 weights unreachable, unsupported model...
        raise _ui_error(e) from None
    out = []
    for name, v in views.items():
        shape = "×".join(str(d) for d in fm.layers[name].shape)
        out += [(v["pca"], f"{name} · PCA · {shape}"), (v["channels"], f"{name} · top channels")]
    return out


def inspect_latest(prompt, model, gallery, index):
    """Text to Image -> Features: the prompt, model and seed of the selected (else first)
    result, and the Features tab."""
    seed = gr.skip()
    if gallery:
        i = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
        item = gallery[i]
        caption = item[1] if isinstance(item, (tuple, list)) and len(item) > 1 else None
        m = re.fullmatch(r"seed (\d+)", caption or "")
        if m:
            seed = int(m.group(1))
    return prompt, model, seed, gr.Tabs(selected="features")


@dataclass
class FeaturesTab:
    prompt: gr.Textbox
    model: gr.Dropdown
    seed: gr.Number
    steps: gr.Number
    inspect: gr.Button
    stop: gr.Button
    image: gr.Image
    info: gr.Markdown
    state: gr.State
    word: gr.Radio
    special: gr.Checkbox
    opacity: gr.Slider
    first: gr.Slider
    last: gr.Slider
    resolutions: gr.CheckboxGroup
    overlay: gr.Image
    grid: gr.Image
    filmstrip: gr.Image
    threshold: gr.Slider
    to_mask: gr.Button
    feat_image: gr.Image
    use_inspected: gr.Button
    backbone: gr.Radio
    show: gr.Button
    views: gr.Gallery
    keys: gr.JSON
    negative_prompt: gr.Textbox
    event: Any = None
    edit_event: Any = None


def build_features_tab() -> FeaturesTab:
    def picture(label, elem_id, **kw):
        return gr.Image(label=label, elem_id=elem_id, type="filepath", format="png",
                        interactive=False, elem_classes=["vgen-pixelated"], **kw)

    with gr.Tab("Features", id="features"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                prompt = StrictTextbox(label="Prompt to inspect", lines=2,
                                       placeholder=EXAMPLE_PROMPTS[0])
                negative_prompt = StrictTextbox(label="Negative prompt", lines=1,
                                                placeholder="what to avoid (optional)")
                with gr.Row():
                    inspect = gr.Button("Inspect", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                model = _model_dropdown(T2I_TASKS)
                with gr.Row():
                    seed = StrictNumber(label="Seed", value=0, precision=0)
                    steps = StrictNumber(label="Steps (0 = model default)", value=None,
                                         precision=0)
                image = picture("Image", "features-image", height=256)
                info = gr.Markdown(elem_id="features-info")
            with gr.Column(scale=6):
                word = gr.Radio(label="Word", choices=[], elem_id="features-word")
                with gr.Row():
                    special = StrictCheckbox(label="Show special tokens", value=False)
                    opacity = StrictSlider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity")
                with gr.Row():
                    first = StrictSlider(0, 1, value=0, step=1, label="First step")
                    last = StrictSlider(0, 1, value=1, step=1, label="Last step")
                resolutions = gr.CheckboxGroup(label="Attention resolutions", choices=[])
                with gr.Row():
                    overlay = picture("Attention of the word", "features-overlay", height=256)
                    filmstrip = picture("Denoising path (predicted clean image per step)",
                                        "features-filmstrip", height=256)
                grid = picture("Every word", "features-grid")
                with gr.Row():
                    threshold = StrictSlider(0.0, 1.0, value=0.5, step=0.05,
                                             label="Mask threshold")
                    to_mask = gr.Button("Use as mask → Edit (inpaint)")
        with gr.Accordion("Feature maps of an image", open=False):
            with gr.Row(equal_height=False):
                with gr.Column(scale=4):
                    feat_image = SafeImage(label="Image", type="filepath", format="png",
                                           sources=["upload", "clipboard"],
                                           elem_classes=["vgen-pixelated"], height=256)
                    use_inspected = gr.Button("Use the inspected image", size="sm")
                    backbone = gr.Radio(choices=list(FEATURE_BACKBONES), value="unet",
                                        label="Backbone",
                                        info="unet / vae: the generator picked above (offline); "
                                        "vgg16: ImageNet CNN, weights from the Hub")
                    show = gr.Button("Show features")
                with gr.Column(scale=6):
                    views = gr.Gallery(label="PCA-to-RGB and strongest channels per layer",
                                       columns=2, height=520, object_fit="contain",
                                       format="png", interactive=False,
                                       elem_classes=["vgen-gallery", "vgen-pixelated"])
        keys = gr.JSON(visible=False, label="words")  # an output of the /attention endpoint
        state = gr.State(None)
    return FeaturesTab(prompt, model, seed, steps, inspect, stop, image, info, state, word,
                       special, opacity, first, last, resolutions, overlay, grid, filmstrip,
                       threshold, to_mask, feat_image, use_inspected, backbone, show, views,
                       keys, negative_prompt)


def FEATURES_OUTPUTS(f: FeaturesTab) -> list:  # noqa: N802 - a fixed list, built per tab
    return [f.image, f.grid, f.filmstrip, f.state, f.word, f.first, f.last, f.resolutions,
            f.overlay, f.info]


def _wire_features(f: FeaturesTab, edit: EditTab, tabs) -> None:
    private = dict(api_visibility="private")
    quick = dict(api_visibility="private", concurrency_limit=None)
    f.event = gr.on(
        triggers=[f.inspect.click, f.prompt.submit], fn=inspect_from_ui,
        inputs=[f.prompt, f.negative_prompt, f.model, f.seed, f.steps, f.special, f.opacity],
        outputs=FEATURES_OUTPUTS(f),
        concurrency_id=ENGINE_CONCURRENCY_ID, trigger_mode="once", show_progress_on=f.image,
        **private,
    )
    # Edit tab -> Features: the same edit, inspected (the tab is shown first, then filled).
    f.edit_event = edit.inspect.click(
        lambda: gr.Tabs(selected="features"), None, tabs, **quick,
    ).then(
        inspect_edit_from_ui,
        [edit.editor, edit.prompt, edit.mode, edit.strength, edit.image_guidance,
         edit.negative_prompt, edit.model, edit.steps, edit.guidance, edit.seed,
         edit.randomize_seed, edit.width, edit.height, edit.scheduler, f.special, f.opacity],
        FEATURES_OUTPUTS(f), concurrency_id=ENGINE_CONCURRENCY_ID, show_progress_on=f.image,
        **private,
    )
    f.stop.click(fn=None, cancels=[f.event, f.edit_event])
    api_button = gr.Button(visible=False)
    api_button.click(inspect_attention, [f.prompt, f.model, f.seed, f.steps, f.negative_prompt],
                     [f.image, f.grid, f.filmstrip, f.keys], api_name="attention",
                     concurrency_id=ENGINE_CONCURRENCY_ID, show_progress_on=f.image)
    filters = [f.state, f.word, f.first, f.last, f.resolutions, f.opacity]
    gr.on(triggers=[f.word.change, f.first.release, f.last.release, f.resolutions.change,
                    f.opacity.release], fn=render_maps, inputs=filters,
          outputs=[f.overlay, f.grid], **quick)
    f.special.change(update_word_choices, [f.state, f.special, f.word], f.word, **quick)
    # The Edit tab is shown first and the editor filled after: a layer given to an editor that
    # is not drawn yet is not shown in the browser.
    pending = gr.State(None)
    f.to_mask.click(use_as_mask, [f.state, f.word, f.threshold, f.first, f.last, f.resolutions],
                    [pending, edit.mode, tabs], **quick
                    ).success(lambda value: value, pending, edit.editor, **quick)
    f.use_inspected.click(lambda path: path, f.image, f.feat_image, **quick)
    f.show.click(show_features, [f.feat_image, f.backbone, f.model, f.prompt], f.views,
                 concurrency_id=ENGINE_CONCURRENCY_ID, **private)


def build_demo() -> gr.Blocks:
    """The whole UI. Loads no model: errors (missing checkpoint, Hub unreachable) surface as
    gr.Error when a model is used."""
    with gr.Blocks(title="vgen", delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown("# vgen\nLanguage-driven image generation and editing with diffusion "
                    "models: the built-in shapes world offline, or any diffusers model "
                    "from the Hugging Face Hub.")
        with gr.Tabs() as tabs:
            t2i = build_text_to_image_tab()
            edit = build_edit_tab()
            features = build_features_tab()
        _wire_text_to_image(t2i)
        _wire_edit(edit)
        _wire_features(features, edit, tabs)
        t2i.inspect.click(inspect_latest, [t2i.prompt, t2i.model, t2i.gallery, t2i.selected],
                          [features.prompt, features.model, features.seed, tabs],
                          api_visibility="private", concurrency_limit=None)
        t2i.send_to_edit.click(send_to_edit, [t2i.gallery, t2i.selected], [edit.editor, tabs],
                               api_visibility="private", concurrency_limit=None)
        for event in (t2i.event, edit.event):  # a model may have been downloaded
            event.then(refresh_model_choices, None, [t2i.model, edit.model],
                       api_visibility="private", concurrency_limit=None)
        demo.load(refresh_model_choices, None, [t2i.model, edit.model],
                  api_visibility="private", concurrency_limit=None)
        # The Features tab's picker too (its model may have just been downloaded).
        features_choices = dict(fn=lambda: gr.update(choices=model_choices(T2I_TASKS)),
                                inputs=None, outputs=features.model,
                                api_visibility="private", concurrency_limit=None)
        demo.load(**features_choices)
        features.event.then(**features_choices)
    return demo


def queue_settings() -> dict:
    return dict(
        default_concurrency_limit=int(os.environ.get("VGEN_CONCURRENCY", 1)),
        max_size=int(os.environ.get("VGEN_QUEUE_SIZE", 16)),
    )


REPO_DIR = Path(__file__).resolve().parent
DEFAULT_MAX_BODY_SIZE = "2mb"


def _file_size(name: str, default: str) -> int:
    """Bytes from a size such as ``20mb`` (Gradio's units: b, kb, mb, gb)."""
    from gradio.utils import _parse_file_size

    raw = os.environ.get(name, "").strip() or default
    try:
        size = _parse_file_size(raw)
    except ValueError:
        size = None
    if not size or size <= 0:
        raise SystemExit(f"{name}={raw!r} is not a size such as 20mb")
    return size


def blocked_paths() -> list[str]:
    """Folders Gradio must never serve, whatever else is allowed: this project (code, .git,
    checkpoints), the Hugging Face home (token, cache), the model roots, the usual secret
    folders of the home directory, /etc, /proc, /sys, plus ``VGEN_BLOCKED_PATHS`` (and
    ``GRADIO_BLOCKED_PATHS``, which Gradio ignores once ``blocked_paths`` is given). Gradio
    only serves its own upload/cache folder here anyway (``allowed_paths`` is empty); this is
    the second line. A folder that contains the upload folder cannot be blocked: skipped."""
    from gradio.utils import get_upload_folder
    from huggingface_hub import constants as hf

    from vgen.hub import allowed_local_roots

    home = Path.home()
    candidates = [REPO_DIR, Path(hf.HF_HOME), Path(hf.HF_HUB_CACHE), Path(hf.HF_TOKEN_PATH),
                  Path(hf.HF_STORED_TOKENS_PATH), *allowed_local_roots(),
                  *(home / name for name in (".ssh", ".aws", ".azure", ".config", ".docker",
                                              ".kube", ".gnupg", ".netrc", ".git-credentials",
                                              ".cache", ".pypirc", ".bash_history")),
                  Path("/etc"), Path("/proc"), Path("/sys")]
    extra = os.environ.get("VGEN_BLOCKED_PATHS", "").split(os.pathsep)
    extra += os.environ.get("GRADIO_BLOCKED_PATHS", "").split(",")  # ignored by Gradio once
    candidates += [Path(e.strip()) for e in extra if e.strip()]  # blocked_paths is passed
    served = Path(get_upload_folder()).resolve()
    out: list[str] = []
    for path in candidates:
        path = path.expanduser().resolve()
        if served == path or served.is_relative_to(path):
            if path == REPO_DIR:  # the upload folder was put inside the project
                out += [str(REPO_DIR / n) for n in (".git", "checkpoints", "vgen", "tests", "runs")]
            else:
                logger.warning("not blocking %s: Gradio's upload folder %s is inside it", path,
                               served)
            continue
        if str(path) not in out:
            out.append(str(path))
    return out


class BodySizeLimit:
    """ASGI middleware: a request body larger than the limit is answered 413 (by its
    Content-Length at once, else as soon as the bytes read pass it). Uploads (multipart) may
    carry one file of ``max_file_size`` plus the form's overhead; every other body (JSON of
    the API and the queue) is small: an unbounded one would be read into memory whole."""

    def __init__(self, app, max_body: int, max_upload: int):
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    async def _reject(self, send, limit: int) -> None:
        body = f"request body too large: at most {limit} bytes are accepted".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        limit = self.max_upload if content_type.startswith("multipart/") else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = True
            if too_large:
                return await self._reject(send, limit)
        received, started, refused = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body (no Content-Length) that ran over
                    refused = True
                    if not started:
                        await self._reject(send, limit)
                    return {"type": "http.disconnect"}  # the app sees a client that left
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the app answers is dropped
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise


REFUSED_FILE = ("a file named in this request was not uploaded to this app (or lies outside its "
                "upload folder), so it cannot be used; upload it first")
REFUSED_URL = ("a file URL in this request points to a private, loopback or unresolvable address; "
               "such URLs are not fetched")


def _refusal(error: BaseException) -> str | None:
    """The clear message for a file Gradio refused before any handler ran, else None."""
    from gradio.exceptions import InvalidPathError

    for e in (error, getattr(error, "__cause__", None)):
        if isinstance(e, InvalidPathError):
            return REFUSED_FILE
        if isinstance(e, ValueError) and re.fullmatch(r"Hostname \S+ failed validation", str(e)):
            return REFUSED_URL  # safehttpx refused to download a URL given as a file
    return None


def explain_refused_files() -> None:
    """Gradio refuses a file path in a request that was not uploaded to this app (its
    ``InvalidPathError``) but, with ``show_error`` off, the caller only hears "Error". Turn that
    refusal into a message that says why, without echoing the server's folders (Gradio's own
    text lists every blocked path); the same for a file URL that safehttpx refused (SSRF).
    Wraps ``error_payload`` where Gradio's queue and routes call it; if a Gradio release moves
    it, those errors simply stay terse."""
    import gradio.queueing as queueing
    import gradio.utils as gutils

    original = gutils.error_payload
    if getattr(original, "vgen_wrapped", False):
        return

    def error_payload(error, show_error):
        message = _refusal(error) if error is not None else None
        if message is not None:
            error = gr.Error(message, print_exception=False)
        return original(error, show_error)

    error_payload.vgen_wrapped = True
    gutils.error_payload = error_payload
    if getattr(queueing, "error_payload", None) is original:
        queueing.error_payload = error_payload


async def _unknown_event(request, exc: KeyError):
    """Gradio looks a queued event up by the ``fn_index`` the client sends and lets the
    KeyError of an unknown one become a bare 500; answer 404 with the reason instead."""
    from starlette.responses import JSONResponse, PlainTextResponse

    if request.url.path.rstrip("/").endswith("/queue/join"):
        return JSONResponse({"detail": f"no event with fn_index {exc.args[0]!r:.40}"}, 404)
    logger.error("unhandled KeyError on %s", request.url.path, exc_info=exc)
    return PlainTextResponse("Internal Server Error", 500)


def launch_settings() -> dict:
    from starlette.middleware import Middleware

    max_file = _file_size("VGEN_MAX_FILE_SIZE", DEFAULT_MAX_FILE_SIZE)
    max_body = _file_size("VGEN_MAX_BODY_SIZE", DEFAULT_MAX_BODY_SIZE)
    return dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        max_file_size=max_file,
        allowed_paths=[],  # outputs live in Gradio's own cache folder
        blocked_paths=blocked_paths(),
        enable_monitoring=False,  # /monitoring/summary would show every event's timing
        app_kwargs={"middleware": [Middleware(BodySizeLimit, max_body=max_body,
                                              max_upload=max_file + 64 * 1024)],
                    "exception_handlers": {KeyError: _unknown_event}},
        css=CSS,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo = build_demo()
    demo.queue(**queue_settings())
    explain_refused_files()
    demo.launch(**launch_settings())


if __name__ == "__main__":
    main()
