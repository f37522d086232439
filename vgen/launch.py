"""``python app.py`` in a subprocess on a free loopback port, stopped on exit: how the bench and
the tests drive the real app."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

REPO_DIR = Path(__file__).resolve().parent.parent


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: on Linux, the child gets SIGTERM when the thread that
    started it dies (``PR_SET_PDEATHSIG``), so a crashed test run or bench leaves no app serving
    or spinner spinning; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(env: dict[str, str], work: Path, timeout: float = 240.0, unset: tuple[str, ...] = ()):
    """Yields ``url``, ``port``, ``pid``, ``log`` (the app's output file) and ``started``
    (perf_counter just before the process was started) once the app answers. The app's
    environment: this one, minus ``unset``, plus loopback/offline-friendly Gradio settings, plus
    ``env``. Raises RuntimeError with the log's tail when it exits or does not answer in time."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if k not in unset}
    full.update({"GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
                 "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(work / "gradio"),
                 "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                 "PYTHONUNBUFFERED": "1", **env})
    log = work / "app.log"
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_DIR, env=full, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-4000:]}")
            try:
                urllib.request.urlopen(url + "config", timeout=2).close()
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"app.py did not answer on {url} within {timeout:.0f} s: "
                                       f"{log.read_text(errors='replace')[-4000:]}") from None
                time.sleep(0.05)
        yield SimpleNamespace(url=url, port=port, pid=proc.pid, log=log, started=started)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate, and kill if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
