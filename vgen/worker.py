"""Engine jobs of the app: ``run_job`` (in this process) and ``EngineProcess`` (in a worker
process of its own, what ``python app.py`` uses).

Why a separate process: Gradio's queue wakes its event loop every millisecond, idle or not
(``gradio.queueing``: ``sleep_when_free = 0.001``), and an engine thread in that process needs
the GIL back after every torch op. In isolation that costs a lot: the embedded model's 64x64
image took 0.55 s alone and ~1.0 s with such a loop in another thread of the same process, but
0.585 s with the loop in another process (2 threads). In the launched app the difference was
within this machine's run-to-run noise (the app overhead of ``python -m vgen bench`` and of
alternating runs: 133-211 ms with workers over five runs, 173-224 ms without over four); the
app's own progress events cost more (see ``vgen.ui.handlers.PROGRESS_EVERY_S``). What a worker surely
gives: a crash of native code (or the kernel's OOM killer) ends a job with a clear error
instead of taking the web server down.

The app's first worker warms up (``warm_up``) while Gradio starts: it loads the engine and the
default model and runs one step, so the first image does not wait for them.

Protocol (tuples, plain pickle, over a socket pair wrapped in ``multiprocessing.connection.Connection``):
app -> worker ``("job", kind, request, time_limit_s, previews)`` and ``("cancel",)``;
worker -> app ``("step", i, n)``, ``("download", progress)``, ``("preview", i, n, image)``,
``("text", i, text)`` (prompt expansion), then ``("done", result, known_words, loaded_models)`` or ``("error", exception,
loaded_models)``; first of all ``("status", engine_status)`` (torch's version, device, dtype,
threads: what ``/status`` reports, so the web server never imports torch to tell them), and after a
warm-up ``("warm", loaded_models)``, both before the first job's messages. One job at a time per
worker; the app keeps one worker per concurrent job.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import config
from .errors import EngineCrashedError, VgenError
from .jobs import JobControl

logger = logging.getLogger("vgen.worker")
POLL_S = 0.05  # how often the waiting side looks at its job's cancel event


def _send(conn: Connection, msg: tuple) -> None:
    """Plain pickle, not ``Connection.send``'s ForkingPickler: torch registers reductions there
    that share tensors through file descriptors and multiprocessing's resource sharer, which a
    worker started with subprocess (another authkey) cannot use."""
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> tuple:
    return pickle.loads(conn.recv_bytes())


def run_job(kind: str, request, control: JobControl) -> tuple[Any, list[str]]:
    """The engine work of one app job: generate or edit (a GenerateRequest / EditRequest),
    ``inspect`` (Features tab: the generation or edit with its attention maps and denoising
    path; an ``Inspection``), ``compare`` (a CompareRequest), ``features`` (a
    FeaturesRequest: feature maps of an image), ``plan`` (a PlanRequest: layouts) or ``expand`` (an ExpandRequest: the language
    model writes prompt variants, streamed through ``control.text``). Returns the result and the
    model's vocabulary when the prompt had words it does not know."""
    if kind == "inspect":
        from .attention import inspect_generation

        out = inspect_generation(request, control=control, maps=True, path=True)
        return out, out.result.extras.get("known_words", [])
    if kind == "compare":
        from .compare_run import compare

        return compare(request, control=control), []
    if kind == "features":  # Features tab: a FeaturesRequest, FeatureMaps
        from .features import extract_request

        return extract_request(request), []
    if kind == "feature_views":  # the app's Features tab: a FeaturesRequest, captioned images
        from .features import feature_views

        return feature_views(request), []
    if kind == "expand":  # prompt expansion: an ExpandRequest, streamed through control.text
        from .expand import expand

        return expand(request, control=control), []
    if kind == "plan":  # layout planning: a PlanRequest, a PlanResult
        from .plan import plan

        return plan(request), []
    if kind == "generate":
        from .generate import generate

        result = generate(request, control=control)
    elif kind == "edit":
        from .edit import edit

        result = edit(request, control=control)
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    return result, result.extras.get("known_words", [])


# ---- the app's side ---------------------------------------------------------------------------

class InProcessEngine:
    """Jobs in the calling thread of this process (tests that build the app in process, ZeroGPU,
    platforms without ``pass_fds``)."""

    def run(self, kind: str, request, control: JobControl) -> tuple[Any, list[str]]:
        return run_job(kind, request, control)

    def loaded_models(self) -> list[str]:
        return _loaded_models()

    def engine_status(self) -> dict:
        from .status import engine_status

        return engine_status(self.loaded_models())

    def close(self) -> None:
        pass


class EngineProcess:
    """One worker process (``python -m vgen.worker``), started at once, warming up first with
    ``warm_up``; ``run`` is called by one thread at a time (``EnginePool`` hands each job its
    own worker)."""

    def __init__(self, warm_up: bool = False):
        ours, theirs = socket.socketpair()
        # vgen importable whatever the working directory: app.py's folder is on the app's path,
        # not on that of a "python -m" child.
        # OMP_WAIT_POLICY=PASSIVE unless the user set it or chose adaptive threads: spinning
        # OpenMP threads make a core taken by another process cost many times (issue #23); it
        # must be set before torch loads.
        env = config.passive_openmp(os.environ.copy())
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "vgen.worker", str(theirs.fileno())] + (["--warm-up"] if warm_up else [])
        self.proc = subprocess.Popen(args, pass_fds=(theirs.fileno(),), env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.loaded: list[str] = []
        self.status: dict | None = None  # the worker's engine_status, once it has said it

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, kind: str, request, control: JobControl) -> tuple[Any, list[str]]:
        _send(self.conn, ("job", kind, request, control.time_limit_s, control.preview is not None))
        cancel_sent = False
        while True:
            if not cancel_sent and control.cancel.is_set():
                _send(self.conn, ("cancel",))
                cancel_sent = True
            try:
                msg = _recv(self.conn) if self.conn.poll(POLL_S) else None
            except (EOFError, OSError):  # the worker is gone
                msg = ("gone",)
            if msg is None and self.alive():
                continue
            if msg is None or msg[0] == "gone":
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                code = self.proc.poll()
                raise EngineCrashedError(
                    f"the engine process stopped unexpectedly (exit code {code}); "
                    "a new one takes the next job", exit_code=code)
            if self._note(msg):
                continue
            if msg[0] in ("done", "error"):
                self.loaded = msg[-1]
                if msg[0] == "error":
                    raise msg[1]
                return msg[1], msg[2]
            try:  # the app's callbacks; one may raise to cancel (a download on Stop)
                if msg[0] == "step" and control.progress is not None:
                    control.progress(*msg[1:])
                elif msg[0] == "download" and control.download is not None:
                    control.download(msg[1])
                elif msg[0] == "preview" and control.preview is not None:
                    control.preview(*msg[1:])
                elif msg[0] == "text" and control.text is not None:
                    control.text(*msg[1:])
            except Exception:  # noqa: BLE001 - the worker is told; its answer ends the job
                control.cancel.set()

    def _note(self, msg: tuple) -> bool:
        """Take a message the worker sends unasked ("status", "warm"); False for any other."""
        if msg[0] == "status":
            self.status = msg[1]
        elif msg[0] == "warm":  # sent once, before this worker's first job
            self.loaded = msg[1]
        else:
            return False
        return True

    def read_notes(self) -> None:
        """Take what an idle worker said unasked (only while no job runs on it)."""
        try:
            while self.conn.poll(0):
                msg = _recv(self.conn)
                if not self._note(msg):
                    logger.warning("unexpected message from an idle worker: %s", msg[0])
        except (EOFError, OSError):  # gone: the next job finds out and reports it
            pass

    def close(self) -> None:
        from .launch import stop

        self.conn.close()  # the worker sees the app gone and exits after its job
        stop(self.proc, timeout=10)


class EnginePool:
    """Worker processes for the app's jobs: an idle one per job, a new one when all are busy
    (Gradio's concurrency limit bounds how many run at once); a worker that died is replaced.
    With ``warm_up`` the ``prestart`` workers warm up (``warm_up``); workers started later for a
    job do not, as that job may want another model."""

    def __init__(self, prestart: int = 1, warm_up: bool = False):
        self._lock = threading.Lock()
        self._idle: list[EngineProcess] = [EngineProcess(warm_up) for _ in range(prestart)]
        self._all: list[EngineProcess] = list(self._idle)

    def run(self, kind: str, request, control: JobControl) -> tuple[Any, list[str]]:
        with self._lock:
            while self._idle and not self._idle[-1].alive():
                self._all.remove(self._idle.pop())
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = EngineProcess()
            with self._lock:
                self._all.append(worker)
        try:
            out = worker.run(kind, request, control)
        except EngineCrashedError:
            with self._lock:
                if worker in self._all:  # close() may have emptied the pool meanwhile
                    self._all.remove(worker)
            worker.close()  # reap the dead process and its socket
            raise
        except BaseException:
            self._put_back(worker)
            raise
        self._put_back(worker)
        return out

    def _put_back(self, worker: EngineProcess) -> None:
        with self._lock:
            if worker.alive():
                self._idle.append(worker)
            elif worker in self._all:
                self._all.remove(worker)

    def loaded_models(self) -> list[str]:
        with self._lock:
            return sorted({ref for w in self._all for ref in w.loaded})

    def engine_status(self) -> dict:
        """What the workers run (as one told when it started), the models they hold; before
        any worker has told, what can be said without torch."""
        from .status import base_status

        with self._lock:
            for worker in self._idle:  # no job thread reads an idle worker's socket
                worker.read_notes()
            told = next((w.status for w in self._all if w.status is not None), None)
            loaded = sorted({ref for w in self._all for ref in w.loaded})
        return {**(told or base_status()), "loaded_models": loaded}

    def close(self) -> None:
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for w in workers:
            w.close()


# ---- the worker's side -------------------------------------------------------------------------

def portable_error(e: BaseException) -> BaseException:
    """What the worker sends back for ``e``: the exception itself. Every vgen error pickles by
    construction (``vgen.errors.VgenError.__reduce_ex__``); a foreign one (torch's, a C
    extension's, one whose ``__init__`` needs keyword arguments) may not, or may pickle and
    then fail to unpickle in the app, so only those are tried first and sent as a
    RuntimeError with their text when they do not survive."""
    if isinstance(e, VgenError):
        return e
    try:
        pickle.loads(pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL))
        return e
    except Exception:  # noqa: BLE001 - any failure to round-trip means "send the text instead"
        return RuntimeError(f"{type(e).__name__}: {e}")


def _loaded_models() -> list[str]:
    """The image models this worker holds, then its language models (once it ran one)."""
    from .pipelines import model_cache

    expand = sys.modules.get(f"{__package__}.expand")  # never imported just to ask
    return model_cache().loaded() + (expand.lm_cache().loaded() if expand is not None else [])


def warm_up() -> None:
    """Import the engine, load the default text-to-image model and run one denoising step at the
    smallest size, so that the first job finds them done (its first step is slower too: oneDNN
    and diffusers set themselves up on the first call). Only a local default model (the embedded
    one, a folder): a Hub model is fetched when a job asks for it, with its download shown. Under
    ``VGEN_BACKEND=openvino`` also one layout job on the grounded twin, so both convert here. Best
    effort: a failure is logged, and the first job that needs the model reports it."""
    from .catalog import default_model, layout_model
    from .hub import parse_reference
    from .requests import GenerateRequest

    try:
        ref = parse_reference(default_model())
        if not ref.is_local:
            logger.info("warm-up: the default model %s is on the Hub; it loads with its first job", ref)
            return
        from .generate import generate

        side = 64  # the smallest size a request may ask for (Limits.min_side): one step is cheap
        generate(GenerateRequest(prompt="", model=str(ref), steps=1, width=side, height=side, seed=0))
        if config.backend_setting() == "openvino" and layout_model(str(ref)) != str(ref):
            # The app's default path draws a planned layout on the grounded twin: convert its
            # IRs (with and without grounding: the model's default steps have both) now, not in
            # a user's first job.
            from .layout import Layout

            one = Layout.from_json('{"objects": [{"phrase": "a red circle", "box": [0.2, 0.2, 0.8, 0.8]}]}')
            generate(GenerateRequest(prompt="a red circle", model=str(ref), layout=one, width=side, height=side,
                                     seed=0))
        logger.info("warm-up: %s loaded", ref)
    except Exception as e:  # noqa: BLE001 - the first job that needs the model reports it
        logger.warning("warm-up skipped: %s: %s", type(e).__name__, e)


def serve(conn: Connection, warm: bool = False) -> None:
    """The worker's loop: jobs one at a time in this (main) thread, after ``warm_up`` when
    ``warm``; a reader thread takes the app's messages, so a cancel reaches the running job's
    control at once (a job that arrives during the warm-up waits for it: it would need the
    same imports and, mostly, the same model)."""
    jobs: queue.Queue = queue.Queue()
    current: dict[str, JobControl] = {}
    send_lock = threading.Lock()

    def send(msg: tuple) -> None:
        with send_lock:
            _send(conn, msg)

    def read() -> None:
        while True:
            try:
                msg = _recv(conn)
            except (EOFError, OSError):
                jobs.put(None)  # the app is gone
                return
            if msg[0] == "cancel":  # the job's control exists from its message on
                control = current.get("job")
                if control is not None:
                    control.cancel.set()
                continue
            _, kind, request, time_limit_s, previews = msg
            current["job"] = JobControl(
                progress=lambda i, n: send(("step", i, n)),
                download=lambda p: send(("download", p)),
                preview=(lambda i, n, image: send(("preview", i, n, image))) if previews else None,
                text=lambda i, t: send(("text", i, t)),
                adapt=share.adjust, time_limit_s=time_limit_s)
            jobs.put((kind, request, current["job"]))

    from .cpu_share import CpuShare
    from .status import engine_status

    share = CpuShare()  # before the reader: its jobs' controls adapt through it
    threading.Thread(target=read, name="vgen-worker-reader", daemon=True).start()

    send(("status", engine_status([])))
    if warm:
        warm_up()
        send(("warm", _loaded_models()))
    while (job := jobs.get()) is not None:
        kind, request, control = job
        share.adjust()  # jobs without denoising steps (plan, expand, features) adapt here only
        try:
            result, known = run_job(kind, request, control)
            send(("done", result, known, _loaded_models()))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the app
            if not isinstance(e, (VgenError, ValueError)):
                logger.error("unexpected error in an engine job", exc_info=e)
            send(("error", portable_error(e), _loaded_models()))


if __name__ == "__main__":  # python -m vgen.worker FD [--warm-up]: started by EngineProcess
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(Connection(int(sys.argv[1])), warm="--warm-up" in sys.argv[2:])
