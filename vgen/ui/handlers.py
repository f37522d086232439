"""The one handler path of every engine endpoint: a typed request -> a job in the fair queue ->
the engine (in a worker process) with progress, previews, Stop and the time limit -> the
endpoint's outputs; every engine error -> ``gr.Error``.

Cancel design: each engine endpoint is an async generator. It waits for an engine slot in the
app's ``FairQueue`` (``vgen.ui.queueing``: at most ``VGEN_SESSION_JOBS`` jobs per session, FIFO
across sessions), then runs the engine in a worker thread with its own ``JobControl``, reports
per-step and download progress through ``gr.Progress`` and yields about once a second while it
waits: a no-op update, or with ``status`` the UI's own progress line (see ``run_job``). When the event is cancelled (Stop, ``cancels=[event]``) or the client
goes away (noticed at the next yield), Gradio cancels or closes the generator; its ``finally``
sets that job's ``control.cancel`` (the engine stops within one denoising step) and waits for the
worker thread to end, so the engine slot is only freed once the engine has really stopped.
There is no global job state: a Stop cancels only the job of the session that pressed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import inspect
import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from vgen import config
from vgen.errors import VgenError
from vgen.worker import InProcessEngine

from .forms import collect_notes
from .queueing import FairQueue

logger = logging.getLogger("vgen.ui")

POLL_S = 0.05  # how often a waiting handler looks at its job
# Progress bar updates at most this often: each one is an event that the app and its client
# process while the job runs, on the cores the engine uses (python -m vgen bench's app overhead).
PROGRESS_EVERY_S = 0.25
YIELD_EVERY_S = 1.0  # how often it yields, so Gradio notices a client that went away

# ---- where jobs run ----------------------------------------------------------------------------
# The engine (in process, or the worker processes ``server.main`` starts) and the fair queue in
# front of it: set once before serving (``configure``); both are bounded and locked.


@dataclass
class _Services:
    engine: Any = field(default_factory=InProcessEngine)
    queue: FairQueue | None = None  # made in the server's event loop, on first use


_SERVICES = _Services()


def configure(engine=None) -> None:
    """Run jobs on ``engine`` (default: in this process) behind a fresh fair queue, sized from
    ``vgen.config`` when the first job arrives."""
    _SERVICES.engine = engine if engine is not None else InProcessEngine()
    _SERVICES.queue = None


def engine():
    return _SERVICES.engine


def fair_queue() -> FairQueue:
    if _SERVICES.queue is None:
        _SERVICES.queue = FairQueue.from_config()
    return _SERVICES.queue


# ---- ZeroGPU: on a ZeroGPU Space the engine call runs inside @spaces.GPU -------------------


def _zero_gpu():
    """The ``spaces`` package on a ZeroGPU Space (it must be imported before CUDA is
    initialised), else None (the variable set but the package missing: run as usual)."""
    if not config.zero_gpu():
        return None
    try:
        import spaces

        return spaces
    except ImportError:
        return None


_SPACES = _zero_gpu()
ZERO_GPU = _SPACES is not None


def engine_call(kind: str, request, control) -> tuple[Any, list[str]]:
    """The engine work of one job (what runs on the GPU): ``vgen.worker.run_job``, in a worker
    process when the server started them, else here."""
    return _SERVICES.engine.run(kind, request, control)


def _gpu_engine_call(kind: str, request, time_limit_s: float | None):
    """ZeroGPU runs this in a forked process and pickles its arguments, so it gets the request
    only; progress and Stop cannot reach into that process (its ``duration`` bounds the job)."""
    from vgen.jobs import JobControl

    return engine_call(kind, request, JobControl(time_limit_s=time_limit_s))


if ZERO_GPU:
    _gpu_engine_call = _SPACES.GPU(duration=config.gpu_duration_s())(_gpu_engine_call)

# ---- errors ------------------------------------------------------------------------------------


def ui_error(e: BaseException) -> gr.Error:
    """The ``gr.Error`` the browser or API caller sees: the engine's own message for its errors
    and bad input; a short typed message (and a logged traceback) for anything else."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, (VgenError, ValueError)):
        return gr.Error(str(e), print_exception=False)
    logger.error("unexpected error in a job", exc_info=(type(e), e, e.__traceback__))
    text = str(e)
    text = text[:300] + "…" if len(text) > 300 else text
    return gr.Error(f"unexpected error ({type(e).__name__}): {text}")


def endpoint(fn: Callable) -> Callable:
    """Endpoint functions (plain, or async generators) raise engine errors; the caller gets them
    as ``gr.Error``. The wrapper keeps ``fn``'s signature and docstring (Gradio reads both for the
    API page and the MCP tool descriptions)."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(*args, **kwargs):
            try:
                async with contextlib.aclosing(fn(*args, **kwargs)) as outputs:
                    async for out in outputs:
                        yield out
            except (VgenError, ValueError) as e:
                raise ui_error(e) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (VgenError, ValueError) as e:
            raise ui_error(e) from None
    return call


def api_only(fn: Callable, inputs: list, outputs: list, api_name: str):
    """An API (and MCP) endpoint with no UI trigger, over the same function as a tab's event:
    its first ``len(outputs)`` outputs. For two things the tab's own event cannot be:
    - an endpoint whose inputs are files: ``gr.api`` neither checks uploaded files nor serves
      returned ones (it skips the components' pre- and postprocessing), so this is an event
      with no triggers over the (hidden) components that do;
    - an endpoint without the tab's ``gr.State`` outputs (which come last): Gradio 6.31's MCP
      server fails on a tool whose event has a State output ("pop index out of range")."""
    n = len(outputs)

    @functools.wraps(fn)
    async def first_outputs(*args, **kwargs):
        async with contextlib.aclosing(fn(*args, **kwargs)) as outs:
            async for out in outs:
                yield out[0] if n == 1 else out[:n]

    return gr.on(triggers=[], fn=first_outputs, inputs=inputs, outputs=outputs,
                 api_name=api_name, concurrency_limit=None, show_progress="hidden")


def session_of(request: gr.Request | None) -> str | None:
    """The fair queue's key: the browser session (one gradio_client Client is one session)."""
    return getattr(request, "session_hash", None) if request is not None else None

# ---- jobs --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Gradio's upload/cache folder: files returned from there are served as they are."""
    try:
        from gradio.utils import get_upload_folder

        return Path(get_upload_folder())
    except Exception:  # noqa: BLE001 - Gradio moved it: its documented default
        return Path(config.gradio_temp_dir() or Path(tempfile.gettempdir()) / "gradio")


def save_images(result) -> list[tuple[str, str]]:
    """PNG files that keep the ``parameters`` text chunk, with a caption giving the seed."""
    from vgen.metadata import png_bytes

    out = []
    for image, seed in zip(result.images, result.seeds):
        data = png_bytes(image)
        folder = cache_dir() / ("vgen-" + hashlib.sha256(data).hexdigest()[:32])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"vgen-seed{seed}.png"
        path.write_bytes(data)
        out.append((str(path), f"seed {seed}"))
    return out


@dataclass
class Job:
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
    texts: dict[int, str] = field(default_factory=dict)  # prompt expansion: variant -> text so far
    text_index: int = 0  # the variant whose text came last
    updates: int = 0  # how many previews and texts arrived
    started: float = field(default_factory=time.perf_counter)

    def on_step(self, step: int, total: int) -> None:
        self.step = (step, total)

    def on_preview(self, step: int, total: int, image) -> None:
        """A live preview from the engine (``JobControl.preview``): a small PNG in Gradio's
        cache folder, shown in the gallery until the images arrive."""
        path = cache_dir() / f"vgen-preview-{uuid.uuid4().hex}" / f"preview-{step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=1)
        self.preview = (str(path), f"preview · step {step}/{total}")
        self.updates += 1

    def on_text(self, index: int, text: str) -> None:
        """A language model's text so far for one variant (``JobControl.text``)."""
        self.texts[index] = text
        self.text_index = index
        self.updates += 1

    def on_download(self, progress) -> None:
        self.download = progress
        self.control.check()  # raising here stops the download on Stop / time limit

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def describe(self) -> str:
        """What the job is doing, in words (the progress line's text)."""
        return describe(self.snapshot())

    def snapshot(self) -> tuple:
        if self.step is not None:
            return ("denoise", self.step)
        if self.download is not None:
            d = self.download
            return ("download", (d.files_done, d.files_total, d.bytes_done, d.bytes_total))
        return ("load", None)


def _work(job: Job, build: Callable[[], Any]) -> None:
    collect_notes(job.notes)  # this thread runs in the job's own context copy
    try:
        request = build()  # image decoding happens here, off the event loop
        if ZERO_GPU:
            job.result, job.known = _gpu_engine_call(job.kind, request, job.control.time_limit_s)
        else:
            job.result, job.known = engine_call(job.kind, request, job.control)
        made = job.result.result if job.kind == "inspect" else job.result
        if hasattr(made, "images"):
            job.files = save_images(made)
    except BaseException as e:  # noqa: BLE001 - handed to the handler, which raises gr.Error
        job.error = e


@dataclass(frozen=True)
class Progress:
    """What a ``status`` callback of ``run_job`` shows: what the job is doing (``text``), seconds
    since the request arrived (one clock for waiting and running, so it never goes back), the
    preview that just arrived (else None) and whether this is the job's first update."""

    text: str
    seconds: float
    preview: tuple[str, str] | None = None
    first: bool = False


def describe(snap: tuple) -> str:
    phase, data = snap
    if phase == "denoise":
        return f"denoising: step {data[0]}/{data[1]}"
    if phase == "download":
        files_done, files_total, bytes_done, bytes_total = data
        mb = f"{bytes_done / 1e6:.1f}" + (f" / {bytes_total / 1e6:.1f}" if bytes_total else "")
        return f"downloading the model: {mb} MB, {files_done}/{files_total} files"
    if phase == "queued" and data is None:
        return "waiting for the engine"
    if phase == "queued":
        return f"waiting for the engine: {data} job{'s' if data != 1 else ''} ahead"
    if phase == "start":
        return "starting"
    return "loading the model"


def report(progress, snap: tuple) -> None:
    """The job's phase through ``gr.Progress`` (what API clients see as ``progress_data``)."""
    phase, data = snap
    if phase == "denoise":
        progress(data, desc="denoising", unit="steps")
    elif phase == "download":
        files_done, files_total, bytes_done, bytes_total = data
        if bytes_total:
            progress(min(1.0, bytes_done / bytes_total), desc=describe(snap))
        else:  # the Hub did not give sizes: count files
            progress((files_done, files_total), desc=describe(snap), unit="files")
    else:
        progress(0.0, desc=describe(snap))


def skip(n: int) -> tuple:
    return tuple(gr.skip() for _ in range(n))


async def _wait_for_slot(session: str | None, progress, tick: Callable[[tuple], tuple],
                         held: list):
    """Yield ``tick(what)`` about once a second while this job waits in the fair queue (so
    Gradio notices a client that went away); ``held`` gets the entered slot. Refused at once
    when the session or the server is full (``SessionBusyError``, ``BusyError``)."""
    ahead: list[int] = []
    slot = fair_queue().slot(session, on_wait=ahead.append)
    entering = asyncio.ensure_future(slot.__aenter__())
    shown, last_yield = None, time.monotonic()
    try:
        while not entering.done():
            if ahead and ahead[-1] != shown:
                shown = ahead[-1]
                report(progress, ("queued", shown))
            if time.monotonic() - last_yield >= YIELD_EVERY_S:
                yield tick(("queued", shown))
                last_yield = time.monotonic()
            await asyncio.wait({entering}, timeout=POLL_S)
        entering.result()  # raises a refusal
        held.append(slot)
    finally:
        if not entering.done():  # cancelled or closed while waiting
            entering.cancel()
            with contextlib.suppress(BaseException):
                await entering
            if entering.done() and not entering.cancelled() and entering.exception() is None:
                await slot.__aexit__(None, None, None)


def preview_update(n_outputs: int) -> Callable[[Job], tuple]:
    """Live previews in a gallery that is the first of ``n_outputs``."""
    return lambda job: ([job.preview], *skip(n_outputs - 1))


async def run_job(kind: str, build: Callable[[], Any], progress, request: gr.Request | None = None,
                  *, n_outputs: int, finish: Callable[[Job], tuple], previews: bool = False,
                  live: Callable[[Job], tuple] | None = None,
                  status: Callable[[Progress], tuple] | None = None):
    """Run the engine for one request: wait for a slot, run it in a worker thread, yield no-op
    updates while waiting and ``finish(job)`` at the end. With ``previews`` (the first output is
    a gallery) live previews are shown in it as the engine makes them; ``live(job)`` is yielded
    whenever a preview or streamed text arrives. With ``status``, ``status(Progress)`` is
    yielded instead: at once, when the phase or step changes (at most every
    ``PROGRESS_EVERY_S``), with each preview, and once a second: the UI's own progress line,
    for an event shown with ``show_progress="hidden"`` (Gradio's own display empties on every
    yield of a generator and restarts its timer). Closing or cancelling this generator cancels
    the job and waits for it to stop."""
    if previews and live is None and status is None:
        live = preview_update(n_outputs)
    origin = time.monotonic()
    first = [status is not None]

    def tick(snap: tuple, preview=None) -> tuple:
        if status is None:
            return skip(n_outputs)
        out = status(Progress(describe(snap), time.monotonic() - origin, preview, first[0]))
        first[0] = False
        return out

    if status is not None:
        yield _bare(tick(("start", None)), n_outputs)
    tick.eager = status is not None  # a progress line to keep current, not just a keep-alive
    # Closed explicitly, so that closing this generator stops the engine before it returns.
    async with contextlib.aclosing(_run_job(kind, build, progress, request, finish, previews,
                                            live, tick)) as outputs:
        async for out in outputs:
            yield _bare(out, n_outputs)


def _bare(out: tuple, n_outputs: int):
    return out[0] if n_outputs == 1 else out  # Gradio takes a lone output's value bare


async def _run_job(kind, build, progress, request, finish, previews, live, tick):
    held: list = []
    async with contextlib.aclosing(_wait_for_slot(session_of(request), progress, tick,
                                                  held)) as waiting:
        async for out in waiting:
            yield out
    try:
        async with contextlib.aclosing(_run_engine(kind, build, progress, finish, previews, live,
                                                   tick)) as running:
            async for out in running:
                yield out
    finally:
        await held[0].__aexit__(None, None, None)


async def _run_engine(kind, build, progress, finish, previews, live, tick):
    from vgen.jobs import JobControl

    # 1. The job and its control: progress, downloads, previews, streamed text, the time limit.
    job = Job(kind)
    job.control = JobControl(progress=job.on_step, download=job.on_download,
                             time_limit_s=config.job_time_limit_s(),
                             preview=job.on_preview if previews and config.previews() else None,
                             text=job.on_text if live is not None else None)
    ctx = contextvars.copy_context()  # Gradio's (and ZeroGPU's) request context
    loop, finished = asyncio.get_running_loop(), asyncio.Event()

    def work() -> None:
        try:
            ctx.run(_work, job, build)
        finally:  # wake the handler at once rather than at its next poll
            with contextlib.suppress(RuntimeError):  # the loop may be gone (server stopping)
                loop.call_soon_threadsafe(finished.set)

    # 2. Run it in a thread; report progress and previews while it runs.
    thread = threading.Thread(target=work, name=f"vgen-{kind}", daemon=True)
    job.started = time.perf_counter()
    thread.start()
    logger.info("%s job started", kind)
    try:
        shown, last_yield, seen, reported = None, time.monotonic(), 0, 0.0
        while thread.is_alive():
            snap, changed = job.snapshot(), False
            if snap != shown and (shown is None or time.monotonic() - reported >= PROGRESS_EVERY_S):
                report(progress, snap)
                shown, reported, changed = snap, time.monotonic(), True
            if job.updates != seen and (live is not None or previews):
                seen = job.updates
                yield live(job) if live is not None else tick(snap, job.preview)
                last_yield = time.monotonic()
                continue
            if changed and tick.eager or time.monotonic() - last_yield >= YIELD_EVERY_S:
                yield tick(snap)  # here Gradio stops a job whose client went away
                last_yield = time.monotonic()
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(finished.wait(), POLL_S)
    finally:
        # 3. Cancelled (Stop), closed (client gone) or failed while waiting: stop the engine.
        if thread.is_alive():
            job.control.cancel.set()
            logger.info("%s job cancelled after %.1f s", kind, job.seconds())
            if not ZERO_GPU:  # the engine stops within one denoising step
                while thread.is_alive():
                    await asyncio.sleep(POLL_S)
                logger.info("%s job stopped", kind)
    # 4. The outputs, or the engine's error.
    if job.error is not None:
        logger.info("%s job failed: %s: %s", kind, type(job.error).__name__, job.error)
        raise ui_error(job.error)
    logger.info("%s job done in %.1f s", kind, job.seconds())
    yield await asyncio.to_thread(finish, job)  # may encode PNGs: off the event loop
