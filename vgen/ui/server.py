"""Serving the app: launch and queue settings, the folders never served, request body limits.

``python app.py`` (or ``vgen.ui.main``) starts the engine's worker processes, builds the Blocks
and serves it. Environment (read in ``vgen.config``): ``GRADIO_SERVER_NAME`` (0.0.0.0),
``GRADIO_SERVER_PORT`` (7860), ``VGEN_CONCURRENCY`` (1 engine job at a time),
``VGEN_QUEUE_SIZE`` (16 waiting; more are answered "busy"), ``VGEN_SESSION_JOBS`` (2 queued or
running per browser session or API client), ``VGEN_MAX_FILE_SIZE`` (20mb per upload),
``VGEN_MAX_BODY_SIZE`` (2mb per non-upload request), ``VGEN_JOB_TIME_LIMIT`` (300 s of a job's
own work; 0 = none), ``VGEN_BLOCKED_PATHS``, ``VGEN_MCP`` (serve the endpoints as MCP tools;
Gradio's own ``GRADIO_MCP_SERVER`` works too), ``VGEN_GPU_DURATION`` (ZeroGPU seconds),
``VGEN_ENGINE_PROCESS`` and ``VGEN_WARM_UP`` (worker processes, the first one warmed up).

Hardening: every value from a browser or API caller goes through the engine's checks
(``vgen.requests.check_inputs``, ``vgen.hub.parse_reference``, ``vgen.images``); uploads are
checked (format allow-list, pixel cap before decoding) before Gradio decodes them; only
Gradio's upload/cache folder is served (``allowed_paths`` empty, secrets and the project folder
in ``blocked_paths``); request bodies are bounded; the fair queue bounds jobs per session and
in all; ``guard.RequestGuard`` reads every API request's JSON body first and refuses, with a
message naming the input, NaN/Infinity, deep nesting, files not uploaded here and file URLs to
private hosts (Gradio's own checks stay the second line; its texts would list the server's
folders, and ``show_error`` would show every unexpected error's text); the non-queued
``/run/<api>`` route is off for queued events.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
from pathlib import Path

from vgen import config

from . import handlers
from .components import CSS
from .guard import RequestGuard

logger = logging.getLogger("vgen.ui")

REPO_DIR = Path(__file__).resolve().parents[2]
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}  # Gradio's (gradio.utils.FileSize)


def parse_size(variable: str, text: str) -> int:
    """Bytes from a size such as ``20mb`` (b, kb, mb, gb); a bad one stops the server at start,
    since a limit silently dropped would weaken it."""
    match = _SIZE.fullmatch(text.strip())
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]) if match else 0
    if size <= 0:
        raise SystemExit(f"{variable}={text!r} is not a size such as 20mb")
    return size


# Gradio's queue holds an engine event only from its join until Gradio starts its handler
# (concurrency_limit=None: at once), where the fair queue admits or refuses it; so a burst of
# joins must fit here, or Gradio answers "Queue is full" before the fair queue can tell a flooder
# that its session is busy. Non-engine events (quick UI updates) wait here too: still bounded.
GRADIO_QUEUE_SIZE = 256


def queue_settings() -> dict:
    """Gradio's queue: engine events skip its concurrency limit (the fair queue in
    ``vgen.ui.queueing`` orders and bounds them); ``max_size`` bounds what else may wait (and
    a burst of joins, see ``GRADIO_QUEUE_SIZE``). ``api_open=False``: the non-queued
    ``/run/<api>`` route (Gradio's own switch) answers 404 for queued events; it would run a
    handler outside the queue (no fair queue order; a generator's answer after its first
    yield, its job left running) and answer any error with a bare 500. gradio_client and the
    MCP server use the queue."""
    return dict(default_concurrency_limit=config.concurrency(), api_open=False,
                max_size=max(GRADIO_QUEUE_SIZE, 4 * (config.queue_size() + config.concurrency())))


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
    candidates += [Path(e) for e in config.extra_blocked_paths()]
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

    max_file = parse_size(*config.max_file_size())
    max_body = parse_size(*config.max_body_size())
    return dict(
        server_name=config.server_name(),
        server_port=config.server_port(),
        max_file_size=max_file,
        allowed_paths=[],  # outputs live in Gradio's own cache folder
        blocked_paths=blocked_paths(),
        enable_monitoring=False,  # /monitoring/summary would show every event's timing
        mcp_server=config.mcp_server(),  # None: Gradio's own GRADIO_MCP_SERVER decides
        # BodySizeLimit first: RequestGuard reads the (then bounded) JSON bodies whole.
        app_kwargs={"middleware": [Middleware(BodySizeLimit, max_body=max_body,
                                              max_upload=max_file + 64 * 1024),
                                   Middleware(RequestGuard)],
                    "exception_handlers": {KeyError: _unknown_event}},
        css=CSS,
    )


def main(pool=None) -> None:
    """Start the engine's worker processes unless ``pool`` (a started ``vgen.worker.EnginePool``,
    see ``vgen.ui.main``) is given, then build and serve the app."""
    from vgen.worker import EnginePool

    from .demo import build_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if pool is None and config.engine_process() and not handlers.ZERO_GPU and os.name == "posix":
        pool = EnginePool(warm_up=config.warm_up())
    if pool is not None:
        atexit.register(pool.close)
        handlers.configure(pool)
    demo = build_demo()
    demo.queue(**queue_settings())
    demo.launch(**launch_settings())
