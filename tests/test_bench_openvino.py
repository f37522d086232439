"""OpenVINO as a peer in the bench (issue #23 item 3): the variant ``openvino-fast`` (FastSD CPU's
recipe through optimum-intel, in an environment of its own, ``vgen.bench_openvino``).

The end-to-end test runs the tiny suite's SD model with all four variants and needs the peer's
environment: created on first use under the user cache (``.ci/run`` creates it before the
tests), reused after. No timing assertions: the figures are checked for shape and sense.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vgen import bench, bench_openvino
from vgen.bench import Case

REPO = Path(__file__).resolve().parent.parent
KEYS = {"model", "variant", "size", "steps", "seconds_per_image", "text_seconds", "unet_seconds",
        "decode_seconds", "peak_rss_mb", "unet_gflops"}


def test_the_tiny_suite_with_openvino_fast_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "VGEN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    for name in ("VGEN_TAESD", "VGEN_TAESDXL", "VGEN_DEFAULT_MODEL"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "vgen", "bench", "--suite", "tiny", "--models", "tiny-sd",
                           "--no-app", "--json", str(out), "--work", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert [(r["model"].split(" ")[0], r["variant"]) for r in runs] == [
        ("tiny-sd", "stock"), ("tiny-sd", "vgen"), ("tiny-sd", "vgen-fast"), ("tiny-sd", "openvino-fast")]
    peer = runs[-1]
    assert "error" not in peer, peer.get("error")
    for r in runs:
        assert set(r) == KEYS and r["size"] == "64x64" and r["steps"] == 2
        assert r["seconds_per_image"] > 0 and r["unet_seconds"] > 0 and r["peak_rss_mb"] > 0
        assert r["text_seconds"] + r["unet_seconds"] + r["decode_seconds"] <= r["seconds_per_image"] * 1.05
    assert peer["decode_seconds"] > 0 and peer["text_seconds"] > 0
    cpu = [c for c in data["cpu_time"]["runs"] if c["variant"] == "openvino-fast"]
    assert len(cpu) == 1 and cpu[0]["cpu_seconds_per_image"] > 0
    [cond] = data["conditions"]["openvino"]
    assert cond["model"] == peer["model"] and "error" not in cond
    assert cond["versions"]["optimum-intel"] == "2.2.0" and cond["versions"]["openvino"]
    assert cond["environment"]["pins"] == list(bench_openvino.PINS)
    assert cond["inference_precision"] in {"f32", "bf16", "f16"}
    assert cond["export_seconds"] >= 0 and cond["compile_seconds"] > 0
    assert "openvino-fast" in proc.stdout  # the table


def test_a_peer_that_cannot_run_says_why_and_has_no_time(tmp_path, monkeypatch):
    """No environment (no network for pip, say): the record carries the reason, never a time."""
    monkeypatch.setattr(bench_openvino, "ensure_env",
                        lambda log: (None, {"folder": "x", "pins": [], "error": "no network"}))
    case = Case("tiny-sd", "tiny-sd (test config)", size=64, steps=2, guidance=0.0)
    out = bench_openvino.run_peer(case, str(tmp_path), str(tmp_path),
                                  {"size": 64, "steps": 2, "guidance": 0.0}, ["a"], 1, 1, 1.0, 1.0, lambda m: None)
    assert out["run"]["variant"] == "openvino-fast" and out["run"]["seconds_per_image"] is None
    assert out["run"]["error"] == "no network" and out["conditions"]["error"] == "no network"
    assert out["cpu"]["cpu_seconds_per_image"] is None
    result = {"runs": [out["run"]], "matmul_peak_gflops": 1.0, "app_overhead_ms": None, "cold_start_s": None,
              "cpu_time": {"matmul_peak_gflops_per_cpu_second": 1.0, "runs": [out["cpu"]]}}
    assert "not run: no network" in bench._table(result)


def test_the_environment_is_keyed_by_python_and_pins():
    key = bench_openvino.env_key()
    assert key.startswith(f"py{sys.version_info[0]}{sys.version_info[1]}-")
    assert bench_openvino.env_dir().name == key and bench_openvino.env_dir().parent.name == "openvino-env"
    assert any(p.startswith("optimum-intel[openvino]==") for p in bench_openvino.PINS)


def test_an_environment_that_pip_cannot_install_is_an_error_and_no_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bench_openvino, "PINS", ("not a requirement ==",))  # pip rejects it offline
    python, info = bench_openvino.ensure_env(lambda m: None)
    assert python is None and "could not create the openvino-fast environment" in info["error"]
    assert "pip" in info["error"] and not (bench_openvino.env_dir() / bench_openvino.MARKER).exists()
