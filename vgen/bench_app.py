"""The app's part of ``python -m vgen bench`` (``vgen.bench``): cold start and per-request
overhead of the launched ``app.py`` against a direct engine call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import config
from .launch import die_with_parent
from .bench import PROMPTS, SEED
from .bench_measure import median


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) another process and its children have used so far: the app's
    own and its engine workers' (``vgen/worker.py``), live or exited (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, and cutime, cstime: children already waited for
    total = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or the child ended meanwhile
            continue
        for child in children:
            try:
                total += process_cpu_s(int(child))
            except OSError:
                pass
    return total


class _ApiTimer:
    """``vgen.ui.api_timer`` in a child process: the app's API clients, timed there."""

    def __init__(self):
        env = config.environment_with(PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parent.parent), config.raw("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "vgen.ui.api_timer"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, preexec_fn=die_with_parent)
        self._read()  # {"started": true}: its imports are done

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"vgen.ui.api_timer exited ({self.proc.wait()})")

    def send(self, message: dict) -> dict:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"app request {message.get('api_name')}: {reply['error']}")
        return reply

    def predict(self, client: str, api_name: str, *args, **kwargs) -> dict:
        return self.send({"client": client, "api_name": api_name, "args": list(args), "kwargs": kwargs})

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bench_app(steps: int | None, repeats: int, work: Path, log: Callable[[str], None]) -> dict:
    """Cold start and per-request overhead of the app on the embedded default model
    (``catalog.embedded_default``).

    Two ``gradio_client`` clients (in ``vgen.ui.api_timer``'s process) take turns with the direct
    engine call: one as the README's API section builds it, with one TLS context reused for all
    its HTTP calls (``ssl_verify=``), and one with gradio_client's defaults, which make each HTTP
    call (3-4 per request) load the CA bundle into a new TLS context even for a plain-HTTP URL
    (httpx builds one per client; encode/httpx#3627): ~21 ms of client CPU each here.
    ``app_overhead_ms`` is the first; ``app_overhead_default_client_ms`` the second."""
    from .catalog import embedded_default
    from .generate import generate
    from .launch import launched_app
    from .pipelines import ModelCache
    from .requests import GenerateRequest

    model = embedded_default()
    env = {"VGEN_DEFAULT_MODEL": model, "HF_HUB_OFFLINE": "1"}
    kw = dict(model="", seed=SEED, randomize_seed=False)
    if steps is not None:
        kw["steps"] = steps
    cache = ModelCache(max_models=1)
    direct_req = GenerateRequest(prompt="", model=model, steps=steps, seed=SEED)
    names = ("reused_tls", "default_client")
    timer = _ApiTimer()  # started first: its imports are not the app's cold start
    try:
        with launched_app(env, work) as app:
            timer.send({"url": app.url, "work": str(work)})
            timer.predict("reused_tls", "/generate", PROMPTS[0], **kw)
            cold = time.perf_counter() - app.started
            cold_cpu = process_cpu_s(app.pid)
            log(f"app: cold start (process start to first image, embedded model) {cold:.1f} s "
                f"({cold_cpu:.1f} CPU s in the app process)")
            timer.predict("default_client", "/generate", PROMPTS[0], **kw)
            generate(replace(direct_req, prompt=PROMPTS[0]), cache=cache)  # warm the direct path too
            # Wall time, and CPU time of both processes (the app's and the clients'), which the
            # machine's other load does not inflate.
            app_s = {name: [] for name in names}
            app_cpu = {name: [] for name in names}
            direct_s, direct_cpu = [], []
            rounds = max(3 * repeats, 9)  # this VM's run-to-run spread is ~±100 ms per request
            for r in range(rounds):
                prompt = PROMPTS[1 + r % (len(PROMPTS) - 1)]
                for name in names:
                    a0 = process_cpu_s(app.pid)
                    t = timer.predict(name, "/generate", prompt, **kw)
                    app_s[name].append(t["seconds"])
                    app_cpu[name].append(t["cpu_seconds"] + process_cpu_s(app.pid) - a0)
                t0, c0 = time.perf_counter(), time.process_time()
                generate(replace(direct_req, prompt=prompt), cache=cache)
                direct_s.append(time.perf_counter() - t0)
                direct_cpu.append(time.process_time() - c0)
            # The floor: the same app, queue and clients for a request that does no engine work.
            floor_s = {name: [] for name in names}
            for _ in range(rounds):
                for name in names:
                    floor_s[name].append(timer.predict(name, "/status")["seconds"])
    finally:
        timer.close()
    direct, direct_c = median(direct_s) * 1000, median(direct_cpu) * 1000
    # The overhead is the median of each round's app-minus-direct difference: the two requests of
    # a round run back to back, so a slow stretch of the machine is in both and cancels.
    ms = {name: {"request": median(app_s[name]) * 1000,
                 "overhead": median([a - d for a, d in zip(app_s[name], direct_s)]) * 1000,
                 "overhead_cpu": median([a - d for a, d in zip(app_cpu[name], direct_cpu)]) * 1000,
                 "request_cpu": median(app_cpu[name]) * 1000, "status": median(floor_s[name]) * 1000}
          for name in names}
    for name, label in (("reused_tls", "client reusing its TLS context"), ("default_client", "default client")):
        m = ms[name]
        log(f"app ({label}): {m['request']:.0f} ms per request through gradio_client, {direct:.0f} ms "
            f"direct: overhead {m['overhead']:.0f} ms ({m['overhead_cpu']:.0f} ms of CPU time); a request "
            f"without engine work (/status) takes {m['status']:.0f} ms")
    r, d = ms["reused_tls"], ms["default_client"]
    return {"cold_start_s": round(cold, 2), "app_overhead_ms": round(r["overhead"], 1),
            "app_request_ms": round(r["request"], 1),
            "direct_request_ms": round(direct, 1),
            "status_request_ms": round(r["status"], 1),
            "app_overhead_default_client_ms": round(d["overhead"], 1),
            "app_request_default_client_ms": round(d["request"], 1),
            "status_request_default_client_ms": round(d["status"], 1),
            "cpu": {"cold_start_cpu_s": round(cold_cpu, 2), "app_overhead_cpu_ms": round(r["overhead_cpu"], 1),
                    "app_request_cpu_ms": round(r["request_cpu"], 1),
                    "direct_request_cpu_ms": round(direct_c, 1),
                    "app_overhead_default_client_cpu_ms": round(d["overhead_cpu"], 1),
                    "app_request_default_client_cpu_ms": round(d["request_cpu"], 1)}}

