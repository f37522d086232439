"""Every environment variable vgen reads, read here and nowhere else.

Values are read when asked for (not at import), so a test or an operator that sets a variable
before a call sees it take effect. Bad values fall back to the default with a warning, except
where a wrong value would silently weaken a limit (sizes: ``SystemExit`` at start).
Torch-free: the web server imports it.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("vgen.config")

DEFAULT_JOB_TIME_LIMIT_S = 300.0
DEFAULT_MAX_FILE_SIZE = "20mb"
DEFAULT_MAX_BODY_SIZE = "2mb"
DEFAULT_SESSION_JOBS = 2


def raw(name: str, default: str = "") -> str:
    """The stripped text of ``name`` (``default`` when unset or blank)."""
    value = os.environ.get(name, "").strip()
    return value or default


def switch(name: str, default: bool = True) -> bool:
    """A switch: on unless set to 0/off/false/no (off unless set to 1/on/true/yes when
    ``default`` is False)."""
    value = raw(name).lower()
    if not value:
        return default
    if default:
        return value not in ("0", "off", "false", "no")
    return value in ("1", "on", "true", "yes")


def positive_float(name: str) -> float | None:
    """A positive number, else None (unset, 0 or less, or not a number: warned)."""
    text = raw(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        logger.warning("ignoring %s=%r: not a number", name, text)
        return None
    return value if value > 0 else None


def whole(name: str, default: int, minimum: int = 0) -> int:
    """A whole number >= ``minimum``, else ``default`` (warned when set but unusable)."""
    text = raw(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        logger.warning("ignoring %s=%r: not a whole number; using %d", name, text, default)
        return default
    if value < minimum:
        logger.warning("ignoring %s=%r: below %d; using %d", name, text, minimum, default)
        return default
    return value


# ---- the web app (vgen.ui) -----------------------------------------------------------------


def zero_gpu() -> bool:
    """SPACES_ZERO_GPU: set by Hugging Face on a ZeroGPU Space."""
    return bool(raw("SPACES_ZERO_GPU"))


def engine_process() -> bool:
    """VGEN_ENGINE_PROCESS (default on; 0/off: jobs in the app's process)."""
    return switch("VGEN_ENGINE_PROCESS")


def warm_up() -> bool:
    """VGEN_WARM_UP (default on): the first engine worker loads the default model at start."""
    return switch("VGEN_WARM_UP")


def previews() -> bool:
    """VGEN_PREVIEWS (default on): live previews in the galleries while a job runs."""
    return switch("VGEN_PREVIEWS")


def job_time_limit_s() -> float | None:
    """VGEN_JOB_TIME_LIMIT: seconds of a job's own work (model loading not counted). Unset:
    300 s; 0 (or less): no limit."""
    if not raw("VGEN_JOB_TIME_LIMIT"):
        return DEFAULT_JOB_TIME_LIMIT_S
    return positive_float("VGEN_JOB_TIME_LIMIT")


def gpu_duration_s() -> int:
    """VGEN_GPU_DURATION: ZeroGPU seconds per job (120)."""
    return int(positive_float("VGEN_GPU_DURATION") or 120)


def concurrency() -> int:
    """VGEN_CONCURRENCY: engine jobs at a time (1)."""
    return whole("VGEN_CONCURRENCY", 1, minimum=1)


def queue_size() -> int:
    """VGEN_QUEUE_SIZE: jobs waiting at most (16); more are answered "busy"."""
    return whole("VGEN_QUEUE_SIZE", 16, minimum=1)


def session_jobs() -> int:
    """VGEN_SESSION_JOBS: engine jobs one browser session or API client may have queued or
    running at once (2; 0: no per-session limit)."""
    return whole("VGEN_SESSION_JOBS", DEFAULT_SESSION_JOBS, minimum=0)


def mcp_server() -> bool | None:
    """VGEN_MCP (off by default): serve the endpoints as MCP tools. None when unset, so
    Gradio's own GRADIO_MCP_SERVER switch still applies."""
    if not raw("VGEN_MCP"):
        return None
    return switch("VGEN_MCP", default=False)


def max_file_size() -> tuple[str, str]:
    """(variable, text) of VGEN_MAX_FILE_SIZE: bytes per upload ("20mb")."""
    return "VGEN_MAX_FILE_SIZE", raw("VGEN_MAX_FILE_SIZE", DEFAULT_MAX_FILE_SIZE)


def max_body_size() -> tuple[str, str]:
    """(variable, text) of VGEN_MAX_BODY_SIZE: bytes per non-upload request ("2mb")."""
    return "VGEN_MAX_BODY_SIZE", raw("VGEN_MAX_BODY_SIZE", DEFAULT_MAX_BODY_SIZE)


def extra_blocked_paths() -> list[str]:
    """VGEN_BLOCKED_PATHS (``os.pathsep``-separated) and GRADIO_BLOCKED_PATHS (comma-separated,
    which Gradio ignores once the app passes ``blocked_paths``): folders never served."""
    extra = os.environ.get("VGEN_BLOCKED_PATHS", "").split(os.pathsep)
    extra += os.environ.get("GRADIO_BLOCKED_PATHS", "").split(",")
    return [e.strip() for e in extra if e.strip()]


def server_name() -> str:
    """GRADIO_SERVER_NAME (0.0.0.0)."""
    return raw("GRADIO_SERVER_NAME", "0.0.0.0")


def server_port() -> int:
    """GRADIO_SERVER_PORT (7860)."""
    return whole("GRADIO_SERVER_PORT", 7860, minimum=1)


def gradio_temp_dir() -> str:
    """GRADIO_TEMP_DIR, when set (Gradio's own upload/cache folder otherwise)."""
    return raw("GRADIO_TEMP_DIR")
