"""``python -m vgen.ui.api_timer``: the client side of the bench's app measurement
(``vgen.bench_app``), in a process of its own so that the engine never imports gradio's client.

It starts before the app does (its imports are then not counted in the app's cold start) and
speaks JSON lines on stdin/stdout:

* first ``{"url": ..., "work": ...}``: build the two clients on the launched app, one as the
  README's API section builds it (one TLS context reused, ``ssl_verify=``) and one with
  gradio_client's defaults (each HTTP call loads the CA bundle into a new TLS context);
  answered ``{"ready": true}``;
* then ``{"client": "reused_tls" | "default_client", "api_name": ..., "args": [...],
  "kwargs": {...}}`` per request, answered ``{"seconds": wall, "cpu_seconds": this process's CPU
  time}`` or ``{"error": "..."}``. End of input closes the clients.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _clients(url: str, work: Path) -> dict:
    import httpx
    from gradio_client import Client

    return {"reused_tls": Client(url, verbose=False, download_files=str(work / "downloads"),
                                 ssl_verify=httpx.create_ssl_context()),
            "default_client": Client(url, verbose=False, download_files=str(work / "downloads-d"))}


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    import gradio_client  # noqa: F401 - imported now, before the app starts: not its cold start

    _reply({"started": True})
    first = json.loads(sys.stdin.readline())
    clients = _clients(first["url"], Path(first["work"]))
    _reply({"ready": True})
    for line in sys.stdin:
        job = json.loads(line)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            clients[job["client"]].predict(*job.get("args", []), api_name=job["api_name"],
                                           **job.get("kwargs", {}))
            _reply({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
        except Exception as e:  # noqa: BLE001 - reported to the bench, which raises it
            _reply({"error": f"{type(e).__name__}: {e}"})
    for client in clients.values():
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
