"""vgen web demo: a Gradio Blocks UI over the ``vgen`` engine, and nothing else.

Tabs: **Text to Image**, **Edit**, **Features** (per-word attention maps, map -> inpainting
mask, denoising path, feature maps) and **Compare** (one prompt and seed across models and
settings, side by side). Named API endpoints for ``gradio_client``: ``/generate``, ``/edit``,
``/attention``, ``/compare`` and ``/expand`` (prompt expansion with a language model); every
other event is private. Handlers only translate: UI values -> a typed request -> ``vgen.generate`` /
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
import atexit
import contextvars
import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import time
import uuid
import contextlib
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from vgen.catalog import CATALOG, default_model, entry_for
from vgen.errors import InvalidRequestError, VgenError
from vgen.requests import EDIT_MODES, EditRequest, GenerateRequest, Limits
from vgen.worker import EnginePool, InProcessEngine

logger = logging.getLogger("vgen.app")

DEFAULT_SCHEDULER = "model default"
DEFAULT_MAX_FILE_SIZE = "20mb"
POLL_S = 0.05  # how often a waiting handler looks at its job
# Progress bar updates at most this often: each one is an event that the app and its client
# process while the job runs, on the cores the engine uses (every step of a 0.6 s image cost
# ~60 ms per request; python -m vgen bench's app overhead).
PROGRESS_EVERY_S = 0.25
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


# Where engine jobs run: here (tests that build the demo in their own process, ZeroGPU), or in
# worker processes that main() starts once (vgen.worker says why). Set before serving, not after.
_ENGINE: Any = InProcessEngine()


def _env_on(name: str) -> bool:
    """A switch that is on unless set to 0/off/false/no."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "off", "false", "no")


def _use_engine_process() -> bool:
    """VGEN_ENGINE_PROCESS (default on; 0/off: jobs in the app's process). Off on ZeroGPU
    (jobs run in its GPU process) and where a child cannot inherit a socket (Windows)."""
    return _env_on("VGEN_ENGINE_PROCESS") and not ZERO_GPU and os.name == "posix"


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


def _previews_on() -> bool:
    """Live previews in the Text to Image gallery (VGEN_PREVIEWS, default on; 0/off/false:
    none, e.g. for a deployment used through the API only)."""
    return _env_on("VGEN_PREVIEWS")


def _time_limit_s() -> float | None:
    """Seconds a job may spend on its own work (encode, denoise; the clock starts when the model
    is loaded, see ``JobControl.restart``). Unset: 300 s; 0 (or less): no limit."""
    raw = os.environ.get("VGEN_JOB_TIME_LIMIT", "").strip()
    if not raw:
        return DEFAULT_JOB_TIME_LIMIT_S
    return _env_float("VGEN_JOB_TIME_LIMIT")


def _engine_call(kind: str, request: GenerateRequest, control) -> tuple[Any, list[str]]:
    """The engine work of one job (what runs on the GPU): ``vgen.worker.run_job``, in a worker
    process when ``main`` started them, else here."""
    return _ENGINE.run(kind, request, control)


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
    # An embedded model (a bare name: a folder under checkpoints/) cannot be downloaded: it is
    # offered only when its folder is here (vgen-shapes-edit exists once trained).
    refs = [default] + [e.ref for e in CATALOG if set(e.tasks) & set(tasks) and e.ref != default
                        and ("/" in e.ref or _is_cached(e.ref))]
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
                     width, height, num_images, scheduler, decoder="full") -> GenerateRequest:
    return GenerateRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=_opt_int(width, "width"), height=_opt_int(height, "height"),
        decoder="full" if decoder is None else decoder,
    )


def edit_request(image, mask, prompt, mode, strength, image_guidance, negative_prompt, model,
                 steps, guidance, seed, randomize_seed, width, height, num_images,
                 scheduler, decoder="full") -> EditRequest:
    s = _opt_float(strength, "strength")
    ig = _opt_float(image_guidance, "image guidance")
    return EditRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=_opt_int(width, "width"), height=_opt_int(height, "height"),
        image=image, mask=mask, mode=mode or "img2img",
        strength=0.75 if s is None else s, image_guidance=ig,
        decoder="full" if decoder is None else decoder,
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
    preview: tuple[str, str] | None = None  # the latest live preview: (PNG file, caption)
    previews: int = 0  # how many were made

    def on_step(self, step: int, total: int) -> None:
        self.step = (step, total)

    def on_preview(self, step: int, total: int, image) -> None:
        """A live preview from the engine (``JobControl.preview``): a small PNG in Gradio's
        cache folder, shown in the gallery until the images arrive."""
        path = _cache_dir() / f"vgen-preview-{uuid.uuid4().hex}" / f"preview-{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=1)
        self.preview = (str(path), f"preview · step {step}/{total}")
        self.previews += 1

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
    if r.extras.get("decoder"):  # which decoder made the images (and why not "fast")
        info += f" · decoder {r.extras['decoder']}"
        if r.extras.get("decoder_note"):
            info += f" ({r.extras['decoder_note']})"
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
                   finish: Callable[[_Job, float], tuple] | None = None, previews: bool = False):
    """Run the engine for one request in a worker thread; yield no-op updates while waiting and
    the outputs at the end (``finish(job, started)``, default ``_outputs``). With ``previews``
    (the first output is a gallery) live previews are shown in it as the engine makes them.
    Closing or cancelling this generator cancels the job and waits for it to stop."""
    from vgen.jobs import JobControl

    job = _Job(kind)
    job.control = JobControl(progress=job.on_step, download=job.on_download,
                             time_limit_s=_time_limit_s(),
                             preview=job.on_preview if previews and _previews_on() else None)
    ctx = contextvars.copy_context()  # Gradio's (and ZeroGPU's) request context
    loop, finished = asyncio.get_running_loop(), asyncio.Event()

    def work() -> None:
        try:
            ctx.run(_worker, job, build)
        finally:  # wake the handler at once rather than at its next poll (up to POLL_S later)
            with contextlib.suppress(RuntimeError):  # the loop may be gone (server stopping)
                loop.call_soon_threadsafe(finished.set)

    thread = threading.Thread(target=work, name=f"vgen-{kind}", daemon=True)
    started = time.perf_counter()
    thread.start()
    logger.info("%s job started", kind)
    try:
        shown, last_yield, previewed, reported = None, time.monotonic(), 0, 0.0
        while thread.is_alive():
            snap = job.snapshot()
            if snap != shown and (shown is None or time.monotonic() - reported >= PROGRESS_EVERY_S):
                _report(progress, snap)
                shown, reported = snap, time.monotonic()
            if job.previews != previewed:
                previewed = job.previews
                yield ([job.preview], *_skip(n_outputs - 1))
                last_yield = time.monotonic()
                continue
            if time.monotonic() - last_yield >= YIELD_EVERY_S:
                yield _skip(n_outputs)  # here Gradio stops a job whose client went away
                last_yield, shown = time.monotonic(), None  # and the bar is shown again at once
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(finished.wait(), POLL_S)
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
    decoder: str = "full",
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
        decoder: "full" (the model's VAE) or "fast" (tiny autoencoder TAESD, for Stable
            Diffusion / SDXL latents; other models decode with their own VAE and say so)
    Returns:
        gallery of PNG files (each with its generation parameters in the "parameters" text chunk,
        caption "seed N"; while it runs, live previews captioned "preview"), an info line (it
        names the decoder that made the images), and a notice listing words the model does not
        know
    """
    try:
        req = generate_request(prompt, negative_prompt, model, steps, guidance, seed,
                               randomize_seed, width, height, num_images, scheduler, decoder)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    async with aclosing(_run_job("generate", lambda: req, progress, previews=True)) as job:
        async for out in job:  # closing this generator closes (and so cancels) the job
            yield out


async def edit_image(
    image: str | None,
    prompt: str,
    mode: str = "img2img",
    mask: str | None = None,
    strength: float = 0.75,
    image_guidance: float | None = None,
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
    decoder: str = "full",
    progress=gr.Progress(),
):
    """Edit an image: img2img (SDEdit), instruct (InstructPix2Pix) or inpaint (with a mask).

    Parameters:
        image: the source image file (PNG, JPEG, WebP, BMP, GIF or TIFF)
        prompt: the instruction (instruct) or a description of the result (img2img, inpaint)
        mode: img2img | instruct | inpaint
        mask: inpaint only: a mask image, white (or opaque, for RGBA) where to repaint
        strength: img2img / inpaint: how much of the schedule is re-run (0.01-1)
        image_guidance: instruct: how closely to keep the source image; None for the model's
            default (its card's image_guidance_scale, else 1.5)
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
        decoder: "full" (the model's VAE) or "fast" (TAESD decodes Stable Diffusion / SDXL
            latents; instruct edits still encode the source with the full VAE)
    Returns:
        gallery of PNG files with their parameters, an info line (it names the decoder), and a
        vocabulary notice
    """

    def build() -> EditRequest:
        return edit_request(_load(image), _load(mask, "mask"), prompt, mode, strength,
                            image_guidance, negative_prompt, model, steps, guidance, seed,
                            randomize_seed, width, height, num_images, scheduler, decoder)

    async with aclosing(_run_job("edit", build, progress)) as job:
        async for out in job:
            yield out


async def edit_from_editor(editor, prompt, mode, strength, image_guidance, negative_prompt, model,
                           steps, guidance, seed, randomize_seed, width, height, num_images,
                           scheduler, decoder="full", progress=gr.Progress()):
    """The Edit button: like ``edit_image``, with the image and mask from the editor and 0 for
    "model default"."""

    def build() -> EditRequest:
        source, mask = editor_image_and_mask(editor, mode)
        return edit_request(source, mask, prompt, mode, strength, _ui_default(image_guidance),
                            negative_prompt, model, _ui_default(steps), _ui_default(guidance),
                            seed, randomize_seed, _ui_default(width), _ui_default(height),
                            num_images, scheduler, decoder)

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
            new_model = default_model("instruct")  # the embedded editor when it is here
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
    expand: Any = None  # "Expand with language model" (ExpandPanel)
    decoder: Any = None  # "Decoder: full / fast"


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
    api_image_guidance: gr.Number
    inspect: gr.Button  # -> the Features tab, with this edit's attention maps
    decoder: Any = None  # "Decoder: full / fast"
    event: Any = None


def _decoder_radio() -> gr.Radio:
    return gr.Radio(
        choices=[("full VAE", "full"), ("fast (tiny autoencoder)", "fast")], value="full",
        label="Decoder", info="fast: TAESD decodes Stable Diffusion / SDXL latents in a fraction "
        "of the time (slightly softer); other models use their own VAE")


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
                expand_panel = build_expand_panel()
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
                    decoder = _decoder_radio()
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
                          info, notice, restore_file, inspect=inspect_button,
                          expand=expand_panel, decoder=decoder)


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
                    image_guidance = StrictSlider(0.0, 10.0, value=0.0, step=0.1,
                                               label="Image guidance", visible=False,
                                               info="how closely to keep the source image "
                                               "(0: the model's default)")
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
                    decoder = _decoder_radio()
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
        # The slider cannot be empty; the API's image guidance can: None = the model's default.
        api_image_guidance = StrictNumber(label="image guidance", value=None, visible=False)
    return EditTab(editor, prompt, mode, strength, image_guidance, negative, model, steps,
                   guidance, seed, randomize, width, height, num_images, scheduler, edit, stop,
                   gallery, selected, reuse, info, notice, api_image, api_mask,
                   api_image_guidance, inspect, decoder=decoder)


def _wire_text_to_image(t: TextToImageTab) -> None:
    inputs = [t.prompt, t.negative_prompt, t.model, t.steps, t.guidance, t.seed,
              t.randomize_seed, t.width, t.height, t.num_images, t.scheduler, t.decoder]
    outputs = [t.gallery, t.info, t.notice]
    # The prompt may have been written by a language model: the UI event also takes its record.
    t.event = gr.on(
        triggers=[t.generate.click, t.prompt.submit], fn=generate_with_expansion,
        inputs=[t.expand.record, *inputs], outputs=outputs, api_visibility="private", concurrency_id=ENGINE_CONCURRENCY_ID,
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
    _wire_expand(t, inputs)


def _wire_edit(e: EditTab) -> None:
    shared = [e.prompt, e.mode, e.strength, e.image_guidance, e.negative_prompt, e.model,
              e.steps, e.guidance, e.seed, e.randomize_seed, e.width, e.height, e.num_images,
              e.scheduler, e.decoder]
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
        [e.api_image, e.prompt, e.mode, e.api_mask, e.strength, e.api_image_guidance,
         e.negative_prompt, e.model, e.steps, e.guidance, e.seed, e.randomize_seed,
         e.width, e.height, e.num_images, e.scheduler, e.decoder],
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
# Prompt expansion with a language model (vgen.expand), in the Text to Image tab
# --------------------------------------------------------------------------------------------


@dataclass
class ExpandPanel:
    lm: gr.Dropdown
    seed: gr.Number
    temperature: gr.Slider
    variants: gr.Slider
    system_prompt: gr.Textbox
    expand: gr.Button
    picker: gr.Radio
    expanded: gr.Textbox
    diff: gr.HighlightedText
    use: gr.Button
    use_and_generate: gr.Button
    info: gr.Markdown
    result: gr.State  # the last expansion: original, variants, seeds, lm, ... (plain dict)
    record: gr.State  # the expansion in use: Expansion fields + "used" (the prompt it made)
    api_out: gr.JSON  # the /expand endpoint's answer


def lm_choices() -> list[tuple[str, str]]:
    """(label, reference): the default LM, then the curated ones, with cache marks."""
    from vgen.expand import LM_CATALOG, default_lm

    default = default_lm()
    labels = {e.ref: e.label for e in LM_CATALOG}
    refs = [default] + [e.ref for e in LM_CATALOG if e.ref != default]
    return [(labels.get(ref, ref) + (" · default" if ref == default else "")
             + (" · ✓ cached" if _is_cached(ref) else " · ⤓ downloads on first use"), ref)
            for ref in refs]


def _expand_request(prompt, lm, seed, temperature, num_variants, system_prompt):
    from vgen.expand import DEFAULT_TEMPERATURE, ExpandRequest

    t = _opt_float(temperature, "temperature")
    n = _opt_int(num_variants, "number of variants")
    return ExpandRequest(
        prompt=prompt if prompt is not None else "", lm=(lm or "").strip() or None,
        seed=_opt_int(seed, "seed"), temperature=DEFAULT_TEMPERATURE if t is None else t,
        num_variants=1 if n is None else n,
        system_prompt=system_prompt if system_prompt and system_prompt.strip() else None,
    )


def _expand_updates(req):
    """ExpandUpdates of ``req`` under this app's time limit, the language model running where
    the engine's jobs run (a worker process: ``vgen.worker``); engine errors -> gr.Error."""
    from vgen.expand import expand_stream
    from vgen.jobs import JobControl

    stream = expand_stream(req, control=JobControl(time_limit_s=_time_limit_s()),
                           run=lambda r, control: _ENGINE.run("expand", r, control)[0])
    try:
        yield from stream
    except Exception as e:  # not GeneratorExit: a closed handler just stops
        raise _ui_error(e) from None
    finally:
        stream.close()  # a closed handler (Stop, client gone) cancels the model's work


def _result_state(result) -> dict:
    req = result.request
    return {"original": req.prompt, "variants": list(result.variants), "seeds": list(result.seeds),
            "lm": result.lm, "revision": result.revision, "mode": result.mode,
            "temperature": req.temperature, "system_prompt": req.system_prompt or ""}


def _variant_choices(texts) -> list[tuple[str, int]]:
    return [(f"{i + 1} · {t}" if t else f"{i + 1} · …", i) for i, t in enumerate(texts)]


def _diff(original: str | None, expanded: str | None) -> list[tuple[str, str | None]]:
    from vgen.expand import word_diff

    return word_diff(original or "", expanded or "")


def expand_from_ui(prompt, lm, seed, temperature, num_variants, system_prompt):
    """The Expand button: stream the variants of the prompt into the picker, the editable
    expanded prompt and its highlighted additions."""
    try:
        req = _expand_request(prompt, lm, seed, temperature, num_variants, system_prompt)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    original = (req.prompt or "").strip()
    for update in _expand_updates(req):
        text = update.texts[update.index]
        if update.result is None:
            yield (gr.update(choices=_variant_choices(update.texts), value=update.index), text,
                   _diff(original, text), gr.skip(), gr.skip())
            continue
        r = update.result
        info = (f"**{r.lm}** · {r.mode} · revision `{r.revision[:12]}` · seeds "
                f"{r.seeds[0]}–{r.seeds[-1]} · temperature {r.request.temperature:g} · {r.seconds:.1f} s")
        if r.mode == "completion" and system_prompt and system_prompt.strip():
            info += " · (a completion model: the system prompt does not apply)"
        yield (gr.update(choices=_variant_choices(r.variants), value=0), r.variants[0],
               _diff(original, r.variants[0]), _result_state(r), info)


def pick_variant(index, state):
    """A variant picked: it becomes the editable expanded prompt."""
    if not state or not isinstance(index, int) or not 0 <= index < len(state["variants"]):
        return gr.skip(), gr.skip()
    text = state["variants"][index]
    return text, _diff(state["original"], text)


def show_additions(text, state):
    """The expanded prompt edited: re-highlight what differs from the original."""
    return _diff(state["original"] if state else "", text)


def use_expansion(text, index, state):
    """"Use this prompt": the (possibly edited) expansion becomes the prompt, and what made it
    is kept so the images made from it record it."""
    if not state or not (text or "").strip():
        raise gr.Error("Expand a prompt first (Expand), then pick a variant.", print_exception=False)
    i = index if isinstance(index, int) and 0 <= index < len(state["variants"]) else 0
    record = {"original_prompt": state["original"], "expanded_prompt": state["variants"][i],
              "lm": state["lm"], "revision": state["revision"], "seed": state["seeds"][i],
              "temperature": state["temperature"], "system_prompt": state["system_prompt"],
              "used": text.strip()}
    return text.strip(), record


def recorded_expansion(record, prompt):
    """The Expansion to record with a generation: only while the prompt is still the text the
    expansion made (a prompt typed afterwards was not made by the language model)."""
    from vgen.requests import Expansion

    if not isinstance(record, dict) or (prompt or "").strip() != record.get("used"):
        return None
    return Expansion(**{k: v for k, v in record.items() if k != "used"})


async def generate_with_expansion(record, prompt, negative_prompt, model, steps, guidance, seed,
                                  randomize_seed, width, height, num_images, scheduler,
                                  decoder="full", progress=gr.Progress()):
    """The Generate button: like ``generate_images`` with 0 for "model default", plus the
    expansion record of the prompt (the first input, so a field added to the Generate inputs
    cannot shift into it)."""
    import dataclasses

    try:
        req = generate_request(prompt, negative_prompt, model, _ui_default(steps),
                               _ui_default(guidance), seed, randomize_seed, _ui_default(width),
                               _ui_default(height), num_images, scheduler, decoder)
        req = dataclasses.replace(req, expansion=recorded_expansion(record, prompt))
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    async with aclosing(_run_job("generate", lambda: req, progress, previews=True)) as job:
        async for out in job:
            yield out


def expand_prompt(prompt: str, lm: str | None = None, seed: float | None = 0,
                  temperature: float | None = 0.8, num_variants: float = 1,
                  system_prompt: str | None = None):
    """Expand a prompt with a language model (streams; the last answer is complete).

    Parameters:
        prompt: the prompt to expand
        lm: Hub repo id (org/name[@revision]) or local folder of a causal LM; empty for the
            default (the embedded vgen-shapes-lm)
        seed: variant i uses seed + i; -1 draws one
        temperature: sampling temperature, 0-2 (0: greedy)
        num_variants: how many expansions (1-8)
        system_prompt: instruction models only; empty for the default one
    Returns:
        {"variants": [...], "seeds": [...], "lm", "revision", "mode" ("chat" | "completion"),
        "temperature", "system_prompt", "original", "done"}
    """
    try:
        req = _expand_request(prompt, lm, seed, temperature, num_variants, system_prompt)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    for update in _expand_updates(req):
        if update.result is None:
            yield {"variants": list(update.texts), "done": False}
        else:
            yield {**_result_state(update.result), "done": True}


def restore_expansion(path: str | None):
    """The expansion fields from a PNG's parameters (nothing changes for images made without)."""
    n = 10
    if not path:
        return _skip(n)
    from vgen.images import open_image
    from vgen.metadata import read_parameters, request_from_parameters

    try:
        req = request_from_parameters(read_parameters(open_image(path)))
    except (VgenError, ValueError, KeyError):
        return _skip(n)  # restore_parameters reports it
    e = req.expansion
    if e is None:
        return (*_skip(n - 1), None)
    state = {"original": e.original_prompt, "variants": [e.expanded_prompt], "seeds": [e.seed],
             "lm": e.lm, "revision": e.revision, "mode": "", "temperature": e.temperature,
             "system_prompt": e.system_prompt}
    record = {"original_prompt": e.original_prompt, "expanded_prompt": e.expanded_prompt,
              "lm": e.lm, "revision": e.revision, "seed": e.seed, "temperature": e.temperature,
              "system_prompt": e.system_prompt, "used": req.prompt.strip()}
    info = (f"Restored: **{e.lm}** revision `{(e.revision or '?')[:12]}` · seed {e.seed} · "
            f"temperature {e.temperature} wrote this prompt from “{e.original_prompt}”.")
    return (e.lm, e.seed if e.seed is not None else gr.skip(),
            e.temperature if e.temperature is not None else gr.skip(),
            e.system_prompt or gr.skip(), gr.update(choices=_variant_choices([e.expanded_prompt]), value=0),
            e.expanded_prompt, _diff(e.original_prompt, e.expanded_prompt), state, info, record)


def build_expand_panel() -> ExpandPanel:
    from vgen.expand import DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPERATURE, MAX_VARIANTS, default_lm

    with gr.Accordion("Expand with language model", open=False):
        gr.Markdown("A language model rewrites the prompt above into fuller ones; edit and "
                    "pick one, then use it. Images record how their prompt was made.")
        lm = StrictDropdown(choices=lm_choices(), value=default_lm(), allow_custom_value=True,
                            label="Language model",
                            info="Pick one, or type a Hub repo id of a causal LM (org/name[@revision]).")
        with gr.Row():
            seed = StrictNumber(label="Seed (variant i: seed + i)", value=0, precision=0)
            temperature = StrictSlider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05,
                                       label="Temperature")
            variants = StrictSlider(1, MAX_VARIANTS, value=3, step=1, label="Variants")
        system_prompt = StrictTextbox(label="System prompt (instruction models only)", lines=3,
                                      value=DEFAULT_SYSTEM_PROMPT)
        expand = gr.Button("Expand")
        picker = gr.Radio(choices=[], label="Variants", type="value")
        expanded = StrictTextbox(label="Expanded prompt (editable)", lines=2)
        diff = gr.HighlightedText(label="Added by the language model", combine_adjacent=True,
                                  show_legend=True, show_inline_category=False,
                                  color_map={"added": "green", "removed": "red"})
        with gr.Row():
            use = gr.Button("Use this prompt", size="sm")
            use_and_generate = gr.Button("Use and generate", size="sm", variant="primary")
        info = gr.Markdown(elem_id="t2i-expand-info")
    return ExpandPanel(lm, seed, temperature, variants, system_prompt, expand, picker, expanded,
                       diff, use, use_and_generate, info, gr.State(None), gr.State(None),
                       gr.JSON(visible=False))


def _wire_expand(t: TextToImageTab, generate_inputs: list) -> None:
    """``generate_inputs``: the Generate button's inputs (the expansion record comes first)."""
    x = t.expand
    private = dict(api_visibility="private", concurrency_limit=None)
    inputs = [t.prompt, x.lm, x.seed, x.temperature, x.variants, x.system_prompt]
    x.expand.click(expand_from_ui, inputs, [x.picker, x.expanded, x.diff, x.result, x.info],
                   api_visibility="private", concurrency_id=ENGINE_CONCURRENCY_ID,
                   trigger_mode="once", show_progress_on=x.expanded)
    # The API endpoint (gradio_client: client.predict(..., api_name="/expand")).
    gr.Button(visible=False).click(expand_prompt, inputs, x.api_out, api_name="expand",
                                   concurrency_id=ENGINE_CONCURRENCY_ID)
    x.picker.input(pick_variant, [x.picker, x.result], [x.expanded, x.diff], **private)
    x.expanded.input(show_additions, [x.expanded, x.result], x.diff, **private)
    x.use.click(use_expansion, [x.expanded, x.picker, x.result], [t.prompt, x.record], **private)
    gen_inputs = [x.record, *generate_inputs]
    generating = x.use_and_generate.click(
        use_expansion, [x.expanded, x.picker, x.result], [t.prompt, x.record], **private,
    ).success(generate_with_expansion, gen_inputs, [t.gallery, t.info, t.notice],
              api_visibility="private", concurrency_id=ENGINE_CONCURRENCY_ID,
              show_progress_on=t.gallery)
    t.stop.click(fn=None, cancels=[generating])
    t.restore_file.upload(
        restore_expansion, t.restore_file,
        [x.lm, x.seed, x.temperature, x.system_prompt, x.picker, x.expanded, x.diff, x.result,
         x.info, x.record], **private,
    )


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
        return edit_request(source, mask, prompt, mode, strength, _ui_default(image_guidance),
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
    from vgen.features import FeaturesRequest
    from vgen.jobs import JobControl

    if not image_path:
        raise gr.Error("Add an image first (or use the inspected one).", print_exception=False)
    if backbone not in FEATURE_BACKBONES:
        raise gr.Error(f"backbone must be one of {', '.join(FEATURE_BACKBONES)}",
                       print_exception=False)
    try:
        req = FeaturesRequest(_load(image_path), backbone, (model or "").strip() or None, prompt or "")
        fm, _ = _engine_call("features", req, JobControl())  # where the generator is loaded
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


# --------------------------------------------------------------------------------------------
# Compare tab: one prompt and seed across models and settings (vgen.compare, vgen.compare_grid)
# --------------------------------------------------------------------------------------------

NO_AXIS = "none"
# Parameters an axis can vary here, with example values (also the values boxes' placeholders).
COMPARE_AXES = {
    "guidance": "1, 4, 7",
    "steps": "4, 10, 20",
    "scheduler": "default, euler, dpm++2m, unipc",
    "size": "64x64, 96x64",
    "model": "vgen-shapes, stabilityai/sd-turbo",
    "negative_prompt": "| red | blue   (text values are separated by |; empty = none)",
    "prompt": "a red circle | a blue square | two green triangles   (separated by |)",
    "expand": "off, on   (language-model prompt expansion, with the cell's seed)",
}
_COMPARE_DONE = object()  # marks the finished job among the updates of _run_job


@dataclass
class Compared:
    """What one comparison left in the session: the result and its files (for re-rendering the
    grid with a word's attention maps, and for showing a clicked cell)."""

    result: Any  # vgen.compare.CompareResult
    files: list[str]  # the cells' PNGs (with their parameters), row by row
    grid: str  # the labelled grid PNG (the whole comparison in its metadata)
    zip: str  # the cells as PNGs with their parameters, plus comparison.json


def compare_request(prompt, x_param, x_values, y_param=NO_AXIS, y_values="", negative_prompt=None,
                    model=None, seed=None, steps=None, guidance=None, attention=False):
    """A ``vgen.compare.CompareRequest`` from UI values (seed None or -1: one drawn for all)."""
    from vgen.compare import Axis, CompareRequest, split_values

    base = GenerateRequest(prompt=prompt if prompt is not None else "",
                           negative_prompt=negative_prompt if negative_prompt is not None else "",
                           model=(model or "").strip() or None, steps=_opt_int(steps, "steps"),
                           guidance=_opt_float(guidance, "guidance"), seed=_opt_int(seed, "seed"))
    if not x_param or x_param == NO_AXIS:
        raise InvalidRequestError(f"pick the x axis' parameter: one of {', '.join(COMPARE_AXES)}")
    x = Axis(x_param, tuple(split_values(x_param, x_values if x_values is not None else "")))
    y = None
    if y_param and y_param != NO_AXIS:
        y = Axis(y_param, tuple(split_values(y_param, y_values if y_values is not None else "")))
    return CompareRequest(base, x, y, attention=bool(attention))


def _cell_caption(result, cell) -> str:
    req = result.request
    parts = [f"{req.x.param} {result.x_labels[cell.col]}"]
    if req.y is not None:
        parts.append(f"{req.y.param} {result.y_labels[cell.row]}")
    parts.append(f"{cell.seconds:.2f} s")
    if cell.score is not None:
        parts.append("PASS" if cell.score.passed else "FAIL")
    return " · ".join(parts)


def _compare_files(job: _Job) -> Compared:
    """The grid PNG and the ZIP of one finished comparison, in Gradio's cache folder (run in a
    worker thread: encoding 16 large PNGs should not hold up the event loop)."""
    from vgen.compare_grid import cells_zip, grid_image
    from vgen.metadata import png_bytes

    result = job.result
    folder = Path(tempfile.mkdtemp(prefix="vgen-compare-", dir=_cache_dir()))
    grid = folder / "vgen-compare-grid.png"
    grid.write_bytes(png_bytes(grid_image(result)))
    archive = folder / "vgen-compare-cells.zip"
    archive.write_bytes(cells_zip(result))
    return Compared(result, [path for path, _ in job.files], str(grid), str(archive))


def compare_scores(result) -> str:
    """Markdown: the run in one line and, for the shapes model, PASS/FAIL per cell with the
    pass rates per column and row (the strict rule of ``python -m vgen eval shapes``)."""
    req = result.request
    text = (f"**{result.rows}×{result.cols} cells** · seed {req.base.seed} · "
            f"{result.seconds:.1f} s in all ({result.load_s:.1f} s loading) · "
            f"{result.encodings} text encoding{'s' if result.encodings != 1 else ''}")
    if not result.scored:
        return text + ("\n\nScores appear when the model is the embedded **vgen-shapes** and the "
                       "prompt is a sentence of its world (e.g. “" + EXAMPLE_PROMPTS[0] + "”).")

    def rate(v):
        return "–" if v is None else f"{v:.0%}"

    def esc(s):
        return str(s).replace("|", "\\|")

    head = [esc(f"{req.y.param} \\ {req.x.param}" if req.y is not None else req.x.param),
            *map(esc, result.x_labels), "row pass"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, row in enumerate(result.cells):
        marks = ["–" if c.score is None else ("✅ pass" if c.score.passed else "❌ fail") for c in row]
        lines.append("| " + " | ".join([esc(result.y_labels[r]) if req.y is not None else "",
                                         *marks, rate(result.row_pass_rates()[r])]) + " |")
    lines.append("| **column pass** | " + " | ".join(rate(v) for v in result.column_pass_rates())
                 + f" | **{rate(result.pass_rate())}** |")
    return text + "\n\n" + "\n".join(lines)


async def _run_compare(build: Callable, progress, n_outputs: int):
    """Run a comparison as one job (progress over the whole grid, Stop cancels it); yields
    no-op updates while it runs, then ``(_COMPARE_DONE, Compared)``."""
    finish = lambda job, started: (_COMPARE_DONE, job)  # noqa: E731
    async with aclosing(_run_job("compare", build, progress, n_outputs, finish)) as job:
        async for out in job:
            if out and out[0] is _COMPARE_DONE:
                yield _COMPARE_DONE, await asyncio.to_thread(_compare_files, out[1])
                return
            yield out


async def compare_grid(
    prompt: str,
    x_param: str = "guidance",
    x_values: str = "1, 4, 7",
    y_param: str = NO_AXIS,
    y_values: str = "",
    negative_prompt: str | None = None,
    model: str | None = None,
    seed: float | None = 0,
    steps: float | None = None,
    guidance: float | None = None,
    progress=gr.Progress(),
):
    """Compare: the same prompt and seed across the values of one or two parameters.

    Parameters:
        prompt: the base prompt (ignored when an axis is "prompt")
        x_param: the parameter along the columns: guidance, steps, scheduler, size, model,
            negative_prompt, prompt or expand (language-model prompt expansion)
        x_values: its values, separated by commas ("1, 4, 7", "64x64, 96x64", "default, euler",
            "off, on"); prompt and negative_prompt values are separated by "|"
        y_param: the parameter along the rows, or "none"
        y_values: its values, as x_values
        negative_prompt: the base negative prompt (empty for none)
        model: the base model: Hub repo id (org/name[@revision]) or local folder; empty for the
            default
        seed: the seed of every cell; None or -1 for one drawn for the whole grid
        steps: base denoising steps; None for the model's default
        guidance: base guidance scale; None for the model's default
    Returns:
        the labelled grid PNG (the whole comparison as JSON in its "vgen-compare" text chunk),
        the cells (PNG files with their parameters, caption "<x> · <y> · seconds · PASS/FAIL"),
        a summary (request, per-cell seed, seconds, pass/fail and parameters, pass rates per
        column and row; pass/fail only for the embedded vgen-shapes model), and a ZIP of the cells
    """
    try:
        req = compare_request(prompt, x_param, x_values, y_param, y_values, negative_prompt,
                              model, seed, steps, guidance)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    async with aclosing(_run_compare(lambda: req, progress, 4)) as job:
        async for out in job:
            if out[0] is _COMPARE_DONE:
                c = out[1]
                gallery = [(path, _cell_caption(c.result, cell))
                           for path, cell in zip(c.files, c.result.flat())]
                yield c.grid, gallery, c.result.summary(), c.zip
            else:
                yield out


async def compare_from_ui(prompt, x_param, x_values, y_param, y_values, negative_prompt, model,
                          seed, steps, guidance, attention, progress=gr.Progress()):
    """The Run button: like ``compare_grid``, with 0 for "model default" and, optionally, the
    attention maps of every cell."""
    from vgen.compare_grid import attention_words

    try:
        req = compare_request(prompt, x_param, x_values, y_param, y_values, negative_prompt,
                              model, seed, _ui_default(steps), _ui_default(guidance), attention)
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    async with aclosing(_run_compare(lambda: req, progress, 9)) as job:
        async for out in job:
            if out[0] is not _COMPARE_DONE:
                yield out
                continue
            c = out[1]
            gallery = [(path, _cell_caption(c.result, cell))
                       for path, cell in zip(c.files, c.result.flat())]
            words = attention_words(c.result)
            yield (c.grid, gallery, compare_scores(c.result), c,
                   gr.update(choices=[""] + words, value="", visible=bool(words)),
                   gr.update(value=c.grid, interactive=True), gr.update(value=c.zip, interactive=True),
                   None, "")


def show_compare_cell(state: Compared | None, evt: gr.SelectData):
    """A clicked cell full size, with its parameters and (shapes model) the analyzer's verdict."""
    if state is None or not isinstance(evt.index, int) or not 0 <= evt.index < len(state.files):
        return None, ""
    cell = state.result.flat()[evt.index]
    text = f"**{_cell_caption(state.result, cell)}**"
    if cell.score is not None:
        text += f" — analyzer: {cell.score.reason}"
    text += "\n\n```\n" + cell.image.info.get("parameters", "") + "\n```"
    return state.files[evt.index], text


def compare_word(state: Compared | None, word: str | None):
    """The grid with ``word``'s cross-attention map over every cell (none: the plain grid)."""
    if state is None:
        return gr.skip()
    if not word:
        return state.grid
    from vgen.compare_grid import grid_image
    from vgen.metadata import png_bytes

    try:
        data = png_bytes(grid_image(state.result, word=word))
    except (VgenError, ValueError) as e:
        raise _ui_error(e) from None
    path = Path(state.grid).with_name(f"vgen-compare-attention-{hashlib.sha256(word.encode()).hexdigest()[:12]}.png")
    path.write_bytes(data)
    return str(path)


def compare_axis_hint(param: str | None):
    """Example values for the picked parameter, as the values box's placeholder."""
    return gr.update(placeholder=COMPARE_AXES.get(param or "", ""), interactive=param != NO_AXIS)


@dataclass
class CompareTab:
    prompt: gr.Textbox
    x_param: gr.Dropdown
    x_values: gr.Textbox
    y_param: gr.Dropdown
    y_values: gr.Textbox
    negative_prompt: gr.Textbox
    model: gr.Dropdown
    seed: gr.Number
    steps: gr.Number
    guidance: gr.Number
    attention: gr.Checkbox
    run: gr.Button
    stop: gr.Button
    grid: gr.Image
    word: gr.Dropdown
    scores: gr.Markdown
    download_grid: gr.DownloadButton
    download_zip: gr.DownloadButton
    gallery: gr.Gallery
    cell: gr.Image
    cell_info: gr.Markdown
    state: gr.State
    summary: gr.JSON  # an output of the /compare endpoint
    zip_file: gr.File  # an output of the /compare endpoint
    event: Any = None


def build_compare_tab() -> CompareTab:
    from vgen.compare import max_cells

    try:
        cap = max_cells()
    except VgenError:
        cap = None
    axes = list(COMPARE_AXES)
    with gr.Tab("Compare", id="compare"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                prompt = StrictTextbox(label="Prompt", lines=2, value=EXAMPLE_PROMPTS[0],
                                       placeholder=EXAMPLE_PROMPTS[0])
                with gr.Row():
                    run = gr.Button("Run comparison", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                with gr.Row():
                    x_param = StrictDropdown(label="X axis (columns)", choices=axes,
                                             value="guidance", scale=1)
                    x_values = StrictTextbox(label="X values", value="1, 4, 7", scale=2,
                                             placeholder=COMPARE_AXES["guidance"])
                with gr.Row():
                    y_param = StrictDropdown(label="Y axis (rows)", choices=[NO_AXIS, *axes],
                                             value="steps", scale=1)
                    y_values = StrictTextbox(label="Y values", value="5, 20", scale=2,
                                             placeholder=COMPARE_AXES["steps"])
                gr.Markdown("Every cell uses the same seed, so only the axes change. Values are "
                            "separated by commas; prompts and negative prompts by `|`."
                            + (f" At most {cap} cells." if cap else ""))
                model = _model_dropdown(T2I_TASKS)
                with gr.Accordion("Base settings · 0 = the model's default", open=False):
                    negative = StrictTextbox(label="Negative prompt", lines=1)
                    with gr.Row():
                        seed = StrictNumber(label="Seed (-1: draw one)", value=0, precision=0)
                        steps = StrictNumber(label="Steps", value=None, precision=0)
                        guidance = StrictNumber(label="Guidance", value=None, step=0.5)
                attention = StrictCheckbox(label="Record attention maps (then pick a word to "
                                           "see its map in every cell)", value=False)
            with gr.Column(scale=7):
                grid = gr.Image(label="Grid", elem_id="compare-grid", type="filepath", format="png",
                                interactive=False, elem_classes=["vgen-pixelated"],
                                buttons=["download", "fullscreen"])
                word = StrictDropdown(label="Attention of the word (in every cell)", choices=[""],
                                      value="", visible=False, elem_id="compare-word")
                scores = gr.Markdown(elem_id="compare-scores")
                with gr.Row():
                    download_grid = gr.DownloadButton("Download grid (PNG)", interactive=False,
                                                      size="sm")
                    download_zip = gr.DownloadButton("Download cells (ZIP)", interactive=False,
                                                     size="sm")
                gallery = gr.Gallery(label="Cells (click one)", elem_id="compare-gallery",
                                     elem_classes=["vgen-gallery", "vgen-pixelated"], columns=4,
                                     height=420, object_fit="contain", format="png",
                                     type="filepath", interactive=False,
                                     buttons=["download", "fullscreen"])
                with gr.Row(equal_height=False):
                    cell = gr.Image(label="Selected cell", type="filepath", format="png",
                                    interactive=False, elem_classes=["vgen-pixelated"], height=320,
                                    scale=1)
                    cell_info = gr.Markdown(elem_id="compare-cell-info")
        summary = gr.JSON(visible=False, label="summary")  # outputs of the /compare endpoint
        zip_file = gr.File(visible=False, label="cells")
        state = gr.State(None)
    return CompareTab(prompt, x_param, x_values, y_param, y_values, negative, model, seed, steps,
                      guidance, attention, run, stop, grid, word, scores, download_grid,
                      download_zip, gallery, cell, cell_info, state, summary, zip_file)


def _wire_compare(c: CompareTab, demo: gr.Blocks) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None)
    inputs = [c.prompt, c.x_param, c.x_values, c.y_param, c.y_values, c.negative_prompt, c.model,
              c.seed, c.steps, c.guidance]
    c.event = gr.on(
        triggers=[c.run.click], fn=compare_from_ui, inputs=[*inputs, c.attention],
        outputs=[c.grid, c.gallery, c.scores, c.state, c.word, c.download_grid, c.download_zip,
                 c.cell, c.cell_info],
        api_visibility="private", concurrency_id=ENGINE_CONCURRENCY_ID, trigger_mode="once",
        show_progress_on=c.grid,
    )
    c.stop.click(fn=None, cancels=[c.event])
    # The API endpoint: the same fields with None (not 0) for "model default".
    api_button = gr.Button(visible=False)
    api_button.click(compare_grid, inputs, [c.grid, c.gallery, c.summary, c.zip_file],
                     api_name="compare", concurrency_id=ENGINE_CONCURRENCY_ID,
                     show_progress_on=c.grid)
    c.gallery.select(show_compare_cell, c.state, [c.cell, c.cell_info], **quick)
    c.word.change(compare_word, [c.state, c.word], c.grid, **quick)
    c.x_param.change(compare_axis_hint, c.x_param, c.x_values, **quick)
    c.y_param.change(compare_axis_hint, c.y_param, c.y_values, **quick)
    model_choices_update = dict(fn=lambda: gr.update(choices=model_choices(T2I_TASKS)),
                                inputs=None, outputs=c.model, **quick)
    demo.load(**model_choices_update)
    c.event.then(**model_choices_update)



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
            compare = build_compare_tab()
        _wire_text_to_image(t2i)
        _wire_edit(edit)
        _wire_features(features, edit, tabs)
        _wire_compare(compare, demo)
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
        # /status: what this server runs. No engine work and no engine queue slot, so it answers
        # during a job: a health check for API users, and the bench's app round trip.
        gr.Button(visible=False).click(server_status, None, gr.JSON(visible=False), api_name="status",
                                       concurrency_limit=None)
    return demo


def server_status() -> dict:
    """What this server runs.

    Returns:
        vgen and torch versions, device, dtype, torch threads, CPU count, the default model of
        each task (txt2img, instruct) and the models loaded now
    """
    from vgen.status import engine_status

    return {**engine_status(_ENGINE.loaded_models()),
            "engine": "worker process" if isinstance(_ENGINE, EnginePool) else "in process"}


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
    global _ENGINE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if _use_engine_process():  # started first: it loads the engine while Gradio starts
        _ENGINE = EnginePool(warm_up=_env_on("VGEN_WARM_UP"))
        atexit.register(_ENGINE.close)
    demo = build_demo()
    demo.queue(**queue_settings())
    explain_refused_files()
    demo.launch(**launch_settings())


if __name__ == "__main__":
    main()
