"""Shared pytest fixtures. Each section belongs to one area; add new sections rather than editing others."""

from __future__ import annotations

# ==================================================================================================
# Local Hugging Face Hub on loopback (olah mirror server) -- written for tests/test_hub.py, reusable.
#
# The Hub itself is unreachable from tests, so a session-wide olah server (``python -m olah.server``)
# serves git repositories from a mirrors folder, laid out as ``<mirrors>/models/<org>/<name>``, with
# ``[accessibility] offline = true`` so it never tries to reach huggingface.co. huggingface_hub's
# ``snapshot_download`` / ``HfApi`` talk to it unchanged once HF_ENDPOINT points at it. Known limits
# of olah 0.5.4 in this mode (read from its source): an unknown repo *or an unknown revision* answers
# 401 "Repository not found" (it cannot express RevisionNotFound or gated repos), and it ignores tokens.
#
#   local_hub      session fixture: a LocalHub; ``local_hub.add_repo("org/name", {path: bytes|str})``
#                  commits files on ``main`` (creating the repo if needed) and returns the commit hash.
#   local_hub_env  function fixture: points HF_ENDPOINT at the server and HF_HUB_CACHE at a fresh
#                  tmp folder, clears offline/token settings; returns the cache folder.
# ==================================================================================================

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from vgen.launch import die_with_parent, free_port, stop

# Browser fixtures (browser, page, phone_page) for tests/test_browser*.py.
pytest_plugins = ["browser_tools"]

# Tests compare pixels with diffusers' own fp32 calls and with fixed expectations: they run in
# fp32 whatever the CPU (VGEN_DTYPE=auto may pick bf16 on one with bf16 matrix units). The
# precision policy's own tests (tests/test_precision.py) set VGEN_DTYPE themselves.
os.environ.setdefault("VGEN_DTYPE", "float32")


@dataclass
class LocalHub:
    """A running olah mirror: ``endpoint`` is the HF_ENDPOINT value, repos live under ``mirrors_dir``."""

    endpoint: str
    mirrors_dir: Path
    log_path: Path

    def _git(self, repo_dir: Path, *args: str) -> str:
        cmd = ["git", "-C", str(repo_dir), "-c", "user.name=vgen tests", "-c", "user.email=tests@localhost",
               "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str] | None = None,
        *,
        from_dir: Path | None = None,
        message: str = "update",
        tag: str | None = None,
    ) -> str:
        """Commit ``files`` (and/or a copy of ``from_dir``) to ``repo_id``'s ``main``; return the commit hash."""
        repo_dir = self.mirrors_dir / "models" / repo_id
        if not (repo_dir / ".git").exists():
            repo_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "-b", "main", str(repo_dir)], check=True, capture_output=True)
        if from_dir is not None:
            shutil.copytree(from_dir, repo_dir, dirs_exist_ok=True)
        for rel, content in (files or {}).items():
            target = repo_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        self._git(repo_dir, "add", "-A")
        self._git(repo_dir, "commit", "-q", "--allow-empty", "-m", message)
        if tag:
            self._git(repo_dir, "tag", tag)
        return self._git(repo_dir, "rev-parse", "HEAD")


def _wait_until_serving(endpoint: str, proc: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    probe = f"{endpoint}/api/models/vgen-probe/none/revision/main"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"olah exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(probe, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (401 for this unknown repo) means it is serving
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"olah did not answer on {endpoint} within {timeout:.0f}s:\n{log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("olah", reason="the olah mirror server is needed for local-Hub tests")
    if shutil.which("git") is None:
        pytest.skip("git is needed to build the repositories the local Hub serves")
    work = tmp_path_factory.mktemp("local-hub")
    mirrors = work / "mirrors"
    (mirrors / "models").mkdir(parents=True)
    port = free_port()
    config = work / "olah.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"repos-path = {json.dumps(str(work / 'olah-cache'))}\n"
        f"mirrors-path = [{json.dumps(str(mirrors))}]\n"
        "[accessibility]\n"
        "offline = true\n"
    )
    log_path = work / "olah.log"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with open(log_path, "wb") as log:
        # cwd=work: olah writes ./logs relative to its working directory.
        proc = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(config)], cwd=work, env=env,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(endpoint, proc, log_path)
        yield LocalHub(endpoint=endpoint, mirrors_dir=mirrors, log_path=log_path)
    finally:
        stop(proc, timeout=10)


@pytest.fixture
def local_hub_env(local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", local_hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case it was set when the process started
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return cache


# ==================================================================================================
# (end of local Hugging Face Hub section)
# ==================================================================================================


# ==================================================================================================
# Tiny random pipelines (txt2img, inpaint, instruct) saved in Hub layout under one allowed root.
#
#   tiny_models    session fixture: {"root": Path, "txt2img": Path, "inpaint": Path, "instruct": Path}
#   tiny_env       function fixture: VGEN_MODEL_ROOTS = that root and VGEN_DEFAULT_MODEL = the txt2img
#                  folder, with a fresh model cache; returns tiny_models.
# ==================================================================================================


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from tiny_models import save_tiny

    root = tmp_path_factory.mktemp("models")
    out = {"root": root}
    for kind in ("txt2img", "inpaint", "instruct"):
        out[kind] = save_tiny(root / f"tiny-{kind}", kind)
    return out


@pytest.fixture
def tiny_env(tiny_models, monkeypatch):
    from vgen import pipelines

    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tiny_models["root"]))
    monkeypatch.setenv("VGEN_DEFAULT_MODEL", str(tiny_models["txt2img"]))
    monkeypatch.setenv("VGEN_DEFAULT_EDIT_MODEL", str(tiny_models["instruct"]))
    monkeypatch.setattr(pipelines, "_CACHE", None)
    return tiny_models


# ==================================================================================================
# The hardened app in a subprocess (tests/test_hardening.py and tests/test_browser.py share it).
#
#   hardened_app   session fixture: ``python app.py`` on a loopback port with the tiny txt2img model
#                  as the default, VGEN_MODEL_ROOTS = the tiny models' root, HF_TOKEN = a canary that
#                  must never come back, VGEN_QUEUE_SIZE=2 (so "busy" is easy to reach), offline Hub,
#                  and the MCP server on (GRADIO_MCP_SERVER=True, VGEN_MCP=1: /gradio_api/mcp/, for
#                  tests/test_mcp.py and the battery's MCP cases). Returns a HardenedApp (url, port,
#                  pid, log, token, models root, queue size, mcp).
# ==================================================================================================


@dataclass
class HardenedApp:
    url: str
    port: int
    pid: int
    log: Path
    token: str
    models_root: Path
    queue_size: int
    mcp: bool = True  # the app serves its endpoints as MCP tools at url + "gradio_api/mcp/"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="session")
def hardened_app(tmp_path_factory, tiny_models):
    import secrets

    from vgen.launch import launched_app

    work = tmp_path_factory.mktemp("hardened-app")
    token = "hf_vgenCanary" + secrets.token_hex(12)
    queue_size = 2
    env = {
        "VGEN_DEFAULT_MODEL": str(tiny_models["txt2img"]),
        "VGEN_DEFAULT_EDIT_MODEL": str(tiny_models["instruct"]),
        "VGEN_MODEL_ROOTS": str(tiny_models["root"]),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(work / "hf-cache"),
        "HF_TOKEN": token,
        "VGEN_DEVICE": "cpu",
        "VGEN_QUEUE_SIZE": str(queue_size),
        "GRADIO_MCP_SERVER": "True",  # Gradio's own switch; VGEN_MCP is the app's
        "VGEN_MCP": "1",
    }
    unset = ("VGEN_CONCURRENCY", "VGEN_JOB_TIME_LIMIT", "VGEN_MAX_FILE_SIZE", "VGEN_MAX_BODY_SIZE",
             "VGEN_SESSION_JOBS")
    with launched_app(env, work, unset=unset) as app:
        yield HardenedApp(app.url, app.port, app.pid, app.log, token, tiny_models["root"], queue_size)


# ==================================================================================================
# (end of hardened app section)
# ==================================================================================================
