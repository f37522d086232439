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


# ---- the engine -----------------------------------------------------------------------------
# Defaults that live with the code using them (the embedded model's name, Hub ids) stay there:
# these return "" / None when a variable is unset, and the caller falls back.


def integer(name: str, default: int) -> int:
    """An integer setting (a request bound, a cell cap): ``default`` when unset or blank; a
    value that is not an integer raises InvalidRequestError naming it (falling back would
    silently change a limit the operator set)."""
    from .errors import InvalidRequestError

    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError as e:
        raise InvalidRequestError(f"environment variable {name}={text!r} must be an integer") from e


def default_model_setting() -> str:
    """VGEN_DEFAULT_MODEL: the text-to-image model of a request without one ("": the embedded
    model, ``vgen.catalog.default_model``)."""
    return raw("VGEN_DEFAULT_MODEL")


def default_edit_model_setting() -> str:
    """VGEN_DEFAULT_EDIT_MODEL: the instruct editor of a request without one ("": the embedded
    editor when present, else the Hub's InstructPix2Pix)."""
    return raw("VGEN_DEFAULT_EDIT_MODEL")


def default_lm_setting() -> str:
    """VGEN_DEFAULT_LM: the prompt-expansion language model ("": the embedded one)."""
    return raw("VGEN_DEFAULT_LM")


def lm_cache_size() -> int:
    """VGEN_LM_CACHE_SIZE: language models kept loaded (1; at least 1). Not an integer:
    InvalidRequestError."""
    return max(1, integer("VGEN_LM_CACHE_SIZE", 1))


def model_cache_size() -> int:
    """VGEN_MODEL_CACHE_SIZE: image pipelines kept loaded (2). Not an integer: ValueError, as
    ``int()`` has always raised here."""
    return int(raw("VGEN_MODEL_CACHE_SIZE", "2"))


def device_setting() -> str:
    """VGEN_DEVICE: a torch device name overriding cuda/cpu ("": automatic)."""
    return raw("VGEN_DEVICE")


def dtype_setting() -> str:
    """VGEN_DTYPE: auto (the default, also when unset) or float32/float16/bfloat16 (or
    fp32/fp16/bf16), lower-cased ("auto" when unset; see ``vgen.precision``)."""
    return raw("VGEN_DTYPE", "auto").lower()


def backend_setting() -> str:
    """VGEN_BACKEND: what runs a job's denoiser on a CPU, torch (the default, also when unset)
    or openvino, lower-cased (see ``vgen.openvino_backend``)."""
    return raw("VGEN_BACKEND", "torch").lower()


def openvino_int8() -> bool:
    """VGEN_OPENVINO_INT8 (default off): under VGEN_BACKEND=openvino, a denoiser runs its int8
    IR where ``python -m vgen quantize`` made one for the call's shapes (``vgen.openvino_int8``)."""
    return switch("VGEN_OPENVINO_INT8", default=False)


def user_cache_dir() -> str:
    """Where vgen keeps small per-machine facts (the precision micro-benchmark's verdict):
    VGEN_CACHE_DIR, else $XDG_CACHE_HOME/vgen, else ~/.cache/vgen (not created here)."""
    if raw("VGEN_CACHE_DIR"):
        return os.path.expanduser(raw("VGEN_CACHE_DIR"))
    base = raw("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vgen")


def adapt_threads(env: dict | None = None) -> bool:
    """VGEN_ADAPT_THREADS (off unless 1/on) in ``env`` (default: this process's environment):
    the engine worker and the CLI give a job only the cores other processes leave free
    (``vgen.cpu_share``). Off by default: a result then depends on the load (floating-point
    reductions split over another thread count differ in the last bits), and a seed must give
    the same image every time."""
    value = ((os.environ if env is None else env).get("VGEN_ADAPT_THREADS") or "").strip().lower()
    return value in ("1", "on", "true", "yes")


def passive_openmp(env: dict | None = None) -> dict:
    """OMP_WAIT_POLICY=PASSIVE in ``env`` (default: this process's ``os.environ``) unless the
    user set OMP_WAIT_POLICY or chose adaptive threads (:func:`adapt_threads`, which keep
    OpenMP's default wait); returns ``env``. OpenMP threads that spin while they wait make one
    core taken by another process cost an image many times its time (issue #23). Only effective before
    the OpenMP runtime starts, i.e. before torch is imported in that process: the CLI calls it
    first thing, the engine worker for its child's environment."""
    env = os.environ if env is None else env
    if not (env.get("OMP_WAIT_POLICY") or "").strip() and not adapt_threads(env):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def environment_with(**values: str) -> dict:
    """A copy of this process's environment with ``values`` set, for a child process."""
    env = os.environ.copy()
    env.update(values)
    return env


def omp_wait_policy() -> str | None:
    """OMP_WAIT_POLICY as set (None when unset), for the bench's record of its conditions."""
    return os.environ.get("OMP_WAIT_POLICY")


def model_roots_text() -> str:
    """VGEN_MODEL_ROOTS as set (``os.pathsep``-separated folders local models may come from;
    "" when unset), for a caller that extends it for a child process."""
    return os.environ.get("VGEN_MODEL_ROOTS", "")


def model_roots() -> list[str]:
    """VGEN_MODEL_ROOTS split: the extra folders local models may be loaded from."""
    return [e.strip() for e in model_roots_text().split(os.pathsep) if e.strip()]


def max_input_pixels(default: int) -> int:
    """VGEN_MAX_INPUT_PIXELS: pixels of an input image, checked before decoding (``default``).
    Not an integer: ValueError (a bad value must not lift the limit)."""
    return int(raw("VGEN_MAX_INPUT_PIXELS") or default)


def vgg16_weights_setting() -> str:
    """VGEN_VGG16_WEIGHTS: the Features tab's VGG16 weights (Hub id or folder; "": timm's)."""
    return raw("VGEN_VGG16_WEIGHTS")


def tiny_decoder_setting(variable: str) -> str:
    """VGEN_TAESD / VGEN_TAESDXL (``variable``): the fast decoder's tiny autoencoder for SD or
    SDXL latents ("": madebyollin's, ``vgen.decoders.TINY_DECODERS``)."""
    return raw(variable)


def omp_num_threads() -> str | None:
    """OMP_NUM_THREADS as set (None when unset), for the bench's record of its conditions."""
    return os.environ.get("OMP_NUM_THREADS")


# ---- huggingface_hub's variables, re-read at call time (huggingface_hub.constants is frozen at
# import); the caller falls back to huggingface_hub.constants when these say "unset".


def hf_offline() -> bool | None:
    """HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE (the first one set): whether it is 1/on/yes/
    true; None when neither is set."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:
            return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    return None


def hf_endpoint() -> str:
    """HF_ENDPOINT without a trailing slash ("" when unset)."""
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/")


def hf_cache_dir() -> str:
    """HF_HUB_CACHE (or the older HUGGINGFACE_HUB_CACHE), else HF_HOME/hub, with ``~`` and
    variables expanded ("" when none is set)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expandvars(os.path.expanduser(os.environ[name]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return ""


def hf_tokens() -> list[str]:
    """HF_TOKEN and HUGGING_FACE_HUB_TOKEN, those set: secrets to scrub from messages."""
    return [t for t in (os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")) if t]


MAX_COMPARE_CELLS_ENV = "VGEN_MAX_COMPARE_CELLS"


def max_compare_cells(default: int) -> int:
    """VGEN_MAX_COMPARE_CELLS: cells one comparison may have (``default``); not an integer:
    InvalidRequestError (``vgen.compare.max_cells`` also refuses one under 1)."""
    return integer(MAX_COMPARE_CELLS_ENV, default)
