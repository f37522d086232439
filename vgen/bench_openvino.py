"""OpenVINO as a peer in ``python -m vgen bench`` (issue #23 item 3): the variant
``openvino-fast``, FastSD CPU's recipe (optimum-intel's ``OVStableDiffusionPipeline`` exported
from the same local random-weight components, static shapes, the CPU plugin's default
precision, TAESD's decoder), beside ``stock``, ``vgen`` and ``vgen-fast``.

optimum-intel 2.2.0 requires ``huggingface_hub<1.22`` and ``transformers<5.6``; vgen requires
``huggingface_hub>=2.4`` (``requirements.txt``). The two cannot share an environment, so the peer
runs in one of its own: a virtual environment with ``--system-site-packages`` (it reuses the
installed torch) in which pip installs ``PINS`` (diffusers 0.39.0 is the newest that accepts
that hub), created on first use under ``config.user_cache_dir()/openvino-env/<key>`` (``key``: the
Python version and a hash of ``PINS``) and reused while its ``vgen-env.json`` is there. For the
same reason vgen offers no OpenVINO backend (README, Performance).

The export (several minutes for SD-Turbo's architecture) is kept under
``config.user_cache_dir()/openvino-export/``, named by a hash of what it is made from (the model
and TAESD folders' files, ``EXPORT_RECIPE``, the environment's key), so a bench run on the same
weights reuses it, as the bench's random weights are the same from run to run (fixed seeds).

The timing itself is ``vgen/bench_openvino_peer.py``, run by that environment's Python in a
process of its own after the case's other variants (so not interleaved with them): JSON in, JSON
out. A peer that cannot run (no network to create the environment, a failed export) gets a record
with ``seconds_per_image`` None and ``error`` saying why; no time is ever made up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import config

VARIANT = "openvino-fast"
PINS = ("optimum-intel[openvino]==2.2.0", "diffusers==0.39.0", "transformers==5.5.4", "huggingface_hub==1.21.0")
# The SD-Turbo architecture (quick and full suites) and the tiny SD-shaped model (tiny suite):
# SD latents, text-to-image, what FastSD CPU runs through OpenVINO.
CASES = ("sd-turbo", "tiny-sd")
PEER_SCRIPT = Path(__file__).with_name("bench_openvino_peer.py")
# Part of an export's name: change it when bench_openvino_peer.export changes what it writes.
EXPORT_RECIPE = "OVStableDiffusionPipeline export + TAESD decoder IR, v1"
PRECISIONS = ("f32", "bf16", "f16")  # OpenVINO's INFERENCE_PRECISION_HINT values on a CPU
MARKER = "vgen-env.json"
INSTALL_TIMEOUT_S = 1800
PEER_TIMEOUT_S = 3600


def env_key() -> str:
    """The environment's folder name: this Python's version and a hash of ``PINS``."""
    digest = hashlib.sha256("\n".join(PINS).encode()).hexdigest()[:10]
    return f"py{sys.version_info[0]}{sys.version_info[1]}-{digest}"


def env_dir() -> Path:
    return Path(config.user_cache_dir()) / "openvino-env" / env_key()


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


@contextlib.contextmanager
def _locked(folder: Path):
    """One creator at a time (two benches, or CI and a test, starting together)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): no lock, the marker still guards half-built envs
            pass
        yield


def _run(cmd: list, timeout: float) -> str:
    """Run ``cmd``; what went wrong ("" when it exited 0)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if proc.returncode == 0:
        return ""
    return f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"


def ensure_env(log: Callable[[str], None] = print) -> tuple[Path | None, dict]:
    """The peer environment's Python, created if missing, and what is known of it (``folder``,
    ``pins``, ``versions``, ``created_seconds``; ``error`` and no Python when it cannot be made)."""
    folder = env_dir()
    info = {"folder": str(folder), "pins": list(PINS)}
    with _locked(folder):
        marker = folder / MARKER
        if marker.is_file() and _python(folder).is_file():
            return _python(folder), {**info, **json.loads(marker.read_text()), "created_now": False}
        log(f"{VARIANT}: creating its environment in {folder} (pip install {' '.join(PINS)})")
        t0 = time.perf_counter()
        try:
            shutil.rmtree(folder, ignore_errors=True)  # a half-built one (no marker)
            failed = (_run([sys.executable, "-m", "venv", "--system-site-packages", folder], 600)
                      or _run([_python(folder), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                               *PINS], INSTALL_TIMEOUT_S))
            if failed:
                return None, {**info, "error": f"could not create the {VARIANT} environment: {failed}"}
            probe = ("import importlib.metadata as m, json, optimum.intel, diffusers, openvino; print(json.dumps("
                     "{n: m.version(n) for n in ('optimum-intel', 'openvino', 'diffusers', 'transformers', "
                     "'huggingface_hub', 'torch')}))")
            out = subprocess.run([str(_python(folder)), "-I", "-c", probe], capture_output=True, text=True,
                                 timeout=600, check=True).stdout
            versions = json.loads(out.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", None) or str(e)
            return None, {**info, "error": f"could not create the {VARIANT} environment: "
                                           f"{type(e).__name__}: {detail[-1500:]}"}
        seconds = round(time.perf_counter() - t0, 1)
        marker.write_text(json.dumps({"versions": versions, "created_seconds": seconds}) + "\n")
        log(f"{VARIANT}: environment ready in {seconds:.0f} s")
        return _python(folder), {**info, "versions": versions, "created_seconds": seconds, "created_now": True}


def export_dir(case_key: str, size: int, folders: list[str]) -> Path:
    """Where the export of ``folders`` (the model's and TAESD's) at ``size`` is kept: named by a
    hash of their files (paths and bytes), ``EXPORT_RECIPE`` and ``env_key()``."""
    h = hashlib.sha256(f"{env_key()}\n{size}\n{EXPORT_RECIPE}\n".encode())
    for folder in folders:
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            h.update(f"\n{f.relative_to(folder).as_posix()}\n".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 23):
                    h.update(chunk)
    return Path(config.user_cache_dir()) / "openvino-export" / f"{case_key}-{size}-{h.hexdigest()[:16]}"


def taesd_folder(setting: str) -> str:
    """A local folder of the TAESD the bench's ``vgen-fast`` uses (``VGEN_TAESD`` as the bench
    set it: its stand-in folder, or the user's folder or Hub id, resolved through ``vgen.hub``)."""
    if Path(setting).is_dir():
        return setting
    from . import hub

    return str(hub.resolve(setting).path)


def _median(values) -> float:
    return float(statistics.median(values))


def _records(case, setup: dict, samples: list[dict], flops_per_sample: float, per_image: int,
             peak_cpu_gflops: float) -> tuple[dict, dict]:
    """The ``runs`` and ``cpu_time.runs`` records of the peer, the bench's fields."""
    def phase(name: str, key: str) -> float:
        return round(_median([s["phases"].get(name, {}).get(key, 0.0) for s in samples]), 4)

    # FLOPs of one latent through the UNet (counted on the stock run) x the samples it was given
    unet_flops = flops_per_sample * per_image * phase("unet", "calls")
    unet_s, unet_cpu_s = phase("unet", "seconds"), phase("unet", "cpu_seconds")
    cpu_gflops = unet_flops / unet_cpu_s / 1e9 if unet_cpu_s > 0 else 0.0
    run = {"model": case.model, "variant": VARIANT, "size": f"{setup['size']}x{setup['size']}",
           "steps": setup["steps"], "seconds_per_image": round(_median([s["wall"] for s in samples]), 4),
           "text_seconds": phase("text", "seconds"), "unet_seconds": unet_s,
           "decode_seconds": phase("decode", "seconds"),
           "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples), 1),
           "unet_gflops": round(unet_flops / unet_s / 1e9, 2) if unet_s > 0 else 0.0}
    cpu = {"model": case.model, "variant": VARIANT,
           "cpu_seconds_per_image": round(_median([s["cpu"] for s in samples]), 4),
           "text_cpu_seconds": phase("text", "cpu_seconds"), "unet_cpu_seconds": unet_cpu_s,
           "decode_cpu_seconds": phase("decode", "cpu_seconds"),
           "unet_gflops_per_cpu_second": round(cpu_gflops, 2),
           "unet_share_of_matmul_peak": round(cpu_gflops / peak_cpu_gflops, 3) if peak_cpu_gflops else None}
    return run, cpu


def _failed(case, setup: dict, error: str) -> tuple[dict, dict]:
    run = {"model": case.model, "variant": VARIANT, "size": f"{setup['size']}x{setup['size']}",
           "steps": setup["steps"], "seconds_per_image": None, "text_seconds": None, "unet_seconds": None,
           "decode_seconds": None, "peak_rss_mb": None, "unet_gflops": None, "error": error}
    return run, {"model": case.model, "variant": VARIANT, "cpu_seconds_per_image": None, "error": error}


def run_peer(case, model_dir: str, taesd_setting: str, setup: dict, prompts: list[str], seed: int,
             threads: int, flops_per_sample: float, peak_cpu_gflops: float,
             log: Callable[[str], None], precision: str | None = None) -> dict:
    """Time ``openvino-fast`` on ``case``: ``setup`` has size, steps, guidance; ``prompts`` one
    per timed run (the first is also the warm-up's). Returns ``run``, ``cpu`` (records as the
    other variants') and ``conditions`` (environment, export, precision, or the error).
    ``taesd_setting``: ``VGEN_TAESD`` as the bench set it (``taesd_folder``); ``precision``: one
    of ``PRECISIONS`` instead of the CPU plugin's default."""
    from .errors import VgenError

    python, env_info = ensure_env(log)
    if python is not None:
        try:
            taesd = taesd_folder(taesd_setting)
        except (VgenError, OSError) as e:
            python, env_info = None, {**env_info, "error": f"no local TAESD for {VARIANT}: {e}"}
    cond = {"model": case.model, "environment": env_info, "decoder": "TAESD's decoder (the bench's "
            "AutoencoderTiny) as an OpenVINO IR (openvino.convert_model), swapped in for the VAE decoder",
            "timing": "a process of its own after the case's other variants (not interleaved); "
                      "median of the timed runs after one warm-up"}
    if python is None:
        run, cpu = _failed(case, setup, env_info["error"])
        return {"run": run, "cpu": cpu, "conditions": {**cond, "error": env_info["error"]}}
    out_dir = export_dir(case.key, setup["size"], [model_dir, taesd])
    job = {"model": model_dir, "taesd": taesd, "export_dir": str(out_dir), "size": setup["size"],
           "steps": setup["steps"], "guidance": setup["guidance"], "seed": seed, "threads": threads,
           "warm_up_prompt": prompts[0] + " warm-up", "prompts": prompts, "precision": precision}
    log(f"{case.model}: {VARIANT} ({'export and ' if not (out_dir / 'export.json').is_file() else ''}"
        f"{len(prompts)} timed runs in {python.parent.parent.name})")
    with tempfile.TemporaryDirectory(prefix="vgen-ov-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        try:
            # -I: the script's folder (vgen/, whose requests.py would shadow the requests package)
            # is not put on sys.path, nor PYTHONPATH read.
            proc = subprocess.run([str(python), "-I", str(PEER_SCRIPT), str(job_file), str(out_file)],
                                  capture_output=True, text=True, timeout=PEER_TIMEOUT_S,
                                  env=config.environment_with(HF_HUB_OFFLINE="1"))
            out = json.loads(out_file.read_text()) if out_file.is_file() else {
                "error": f"the peer exited {proc.returncode} without a result: {proc.stderr[-1500:]}"}
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            out = {"error": f"{type(e).__name__}: {e}"}
    if "error" in out:
        log(f"{case.model}: {VARIANT} failed: {out['error']}")
        run, cpu = _failed(case, setup, out["error"])
        return {"run": run, "cpu": cpu, "conditions": {**cond, "error": out["error"]}}
    for i, s in enumerate(out["samples"]):
        log(f"  {VARIANT} run {i + 1}/{len(out['samples'])}: {s['wall']:7.2f} s (cpu {s['cpu']:.2f} s)")
    run, cpu = _records(case, setup, out["samples"], flops_per_sample, out["unet_samples_per_image"],
                        peak_cpu_gflops)
    cond["export"] = str(out_dir)
    cond["precision_asked"] = precision or "the CPU plugin's default"
    cond.update({k: out[k] for k in ("versions", "export_seconds", "compile_seconds", "inference_precision",
                                     "ov_config")})
    return {"run": run, "cpu": cpu, "conditions": cond}
