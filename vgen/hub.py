"""Model references and their resolution to a local folder, from disk or the Hugging Face Hub.

A *model reference* is the text a user types to pick a model. It is one of:

* a Hub repo id, ``org/name``, optionally pinned with ``org/name@revision`` (branch, tag or commit);
* a bare folder name under ``checkpoints/`` (``vgen-shapes`` -> ``checkpoints/vgen-shapes``),
  or under one of the extra roots listed in ``VGEN_MODEL_ROOTS``;
* ``checkpoints/NAME`` or a path (absolute, ``./``, ``../``, ``~``) to a folder *inside* an allowed
  root (``checkpoints/`` plus ``VGEN_MODEL_ROOTS``). Paths are checked after resolving symlinks and
  ``..``, so a reference can never reach a folder outside those roots.

:func:`resolve` turns a reference into a :class:`ResolvedModel`: a local folder in diffusers /
transformers layout plus the commit it came from. Hub downloads go through ``huggingface_hub``
(``HF_TOKEN``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are honoured and
re-read at call time) and only ever fetch what a pipeline needs: configs, tokenizer files and
``.safetensors`` weights. Pickle weights (``.bin``, ``.ckpt``, ...) and remote code are never fetched,
because loading them can run arbitrary code.

Every failure is raised as a :mod:`vgen.errors` class whose message says what went wrong and what
to do. Messages never contain the access token.
"""

from __future__ import annotations

import fnmatch
import glob
import importlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, NoReturn, Sequence
from urllib.parse import urlsplit, urlunsplit

from huggingface_hub import (
    HfApi,
    RepoFile,
    constants,
    get_cached_repo_tree,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import HFValidationError, validate_repo_id
from huggingface_hub.utils import tqdm as hf_tqdm

from vgen.errors import (
    GatedModelError,
    InvalidModelReferenceError,
    ModelError,
    ModelNotFoundError,
    NetworkError,
    OfflineError,
    RevisionNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
    VgenError,
)

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR: Path = Path(__file__).resolve().parent.parent / "checkpoints"
"""Where locally trained models live; always an allowed local root."""

_DEFAULT_REVISION = "main"
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BARE_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
# Git refuses these in ref names; the Hub inherits that. The revision also becomes a path under the
# cache's refs/ folder, so "..", a leading "/" and backslashes must never get through.
_BAD_REVISION_CHARS = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]")
# The weight files diffusers and transformers actually look for: the (optionally sharded) standard
# names, optionally with the fp16 variant infix. Anything else (single-file checkpoints such as
# "sd_xl_base_1.0.safetensors", non_ema/ema variants, adapters) is never needed to load a pipeline.
_WEIGHT_FILE = re.compile(
    r"(?:diffusion_pytorch_model|model)(?P<variant>\.fp16)?(?:-\d+-of-\d+)?\.safetensors"
)
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
# README.md: the model card, whose ``inference: parameters:`` are the model's recommended settings
# (vgen.catalog.card_defaults); at the top level only.
_SUPPORT_PATTERNS = ("model_index.json", "*.json", "*.txt", "*.model", "*.tiktoken", "README.md")


# --------------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A validated model reference: either a Hub repo (``repo_id`` + ``revision``) or a local folder.

    Build it with :func:`parse_reference`; that is what checks the id and the allowed roots.
    ``str(ref)`` is the canonical text form and parses back to an equal ``ModelRef``.
    """

    repo_id: str | None = None
    revision: str | None = None  # None means the default branch ("main")
    local_path: Path | None = None

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.local_path is None):
            raise InvalidModelReferenceError(
                "A ModelRef is either a Hub repo (repo_id) or a local folder (local_path), not both or neither."
            )
        if self.local_path is not None and self.revision is not None:
            raise InvalidModelReferenceError("A local folder reference cannot have a revision.")

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def __str__(self) -> str:
        if self.local_path is not None:
            return str(self.local_path)
        return f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)


@dataclass(frozen=True)
class DownloadProgress:
    """Progress of one :func:`resolve` call that talks to the Hub.

    Counts describe how complete the local snapshot is: ``bytes_done`` starts at the size of the
    selected files already in the cache and grows as bytes arrive, so it ends at ``bytes_total``
    (a second resolve of a cached model reports ``bytes_done == bytes_total`` from the first event).
    ``files_done`` counts files finished (cached files finish at once). ``bytes_total`` is None when
    the Hub did not report sizes. ``current_file`` is None when unknown: huggingface_hub downloads
    files in parallel and does not say which file a chunk belongs to.
    """

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int | None
    current_file: str | None


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: ``path`` is a folder in diffusers/transformers layout."""

    ref: ModelRef
    path: Path
    commit: str  # resolved commit hash for Hub refs; "local" for local folders
    variant: str | None  # pass as from_pretrained(variant=...): "fp16" if fp16 weights were chosen, else None


# --------------------------------------------------------------------------------------------------
# Parsing references
# --------------------------------------------------------------------------------------------------


def allowed_local_roots() -> list[Path]:
    """Folders local references may point into: ``checkpoints/`` plus each ``VGEN_MODEL_ROOTS`` entry.

    ``VGEN_MODEL_ROOTS`` is ``os.pathsep``-separated and read at call time; entries are resolved
    (symlinks, ``..``, ``~``; relative entries against the working directory).
    """
    roots = [CHECKPOINTS_DIR.resolve()]
    for entry in os.environ.get("VGEN_MODEL_ROOTS", "").split(os.pathsep):
        entry = entry.strip()
        if entry:
            root = Path(entry).expanduser().resolve()
            if root not in roots:
                roots.append(root)
    return roots


def _allowed_help() -> str:
    roots = ", ".join(str(root) for root in allowed_local_roots())
    return (
        "Use a Hub repo id ('org/name' or 'org/name@revision'), the name of a folder under "
        f"checkpoints/ (e.g. 'vgen-shapes'), or a path to a folder inside an allowed root ({roots}; "
        "add more with VGEN_MODEL_ROOTS)."
    )


def _invalid(reason: str) -> InvalidModelReferenceError:
    return InvalidModelReferenceError(f"{reason}. {_allowed_help()}")


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or re.match(r"[A-Za-z]:", text) is not None
        or text == "checkpoints"
        or text.startswith("checkpoints/")
    )


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether the resolved ``path`` lies strictly inside one of ``roots``."""
    return any(path != root and path.is_relative_to(root) for root in roots)


def _parse_local_path(text: str) -> ModelRef:
    roots = allowed_local_roots()
    if text == "checkpoints" or text.startswith("checkpoints/"):
        # Relative to the project (CHECKPOINTS_DIR) first, then to the working directory.
        rest = text[len("checkpoints") :].lstrip("/")
        candidates = [CHECKPOINTS_DIR / rest, Path.cwd() / text]
    else:
        candidates = [Path(text).expanduser()]
    outside = False
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, symlink loop, permission denied
            continue
        if not real.is_dir():
            continue
        if _inside(real, roots):
            return ModelRef(local_path=real)
        outside = True
    if outside:
        raise _invalid(f"{text!r} is outside the allowed model folders (after resolving symlinks and '..')")
    raise _invalid(f"{text!r} is not an existing folder inside an allowed root")


def _parse_bare_name(text: str) -> ModelRef:
    if _BARE_NAME.fullmatch(text):
        roots = allowed_local_roots()
        escaped = False
        for root in roots:
            try:
                real = (root / text).resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if real.is_dir() and _inside(real, roots):
                return ModelRef(local_path=real)
            escaped = escaped or not _inside(real, roots)
        if escaped:
            raise _invalid(f"{text!r} links outside the allowed model folders (after resolving symlinks)")
    raise _invalid(
        f"{text!r} is neither a Hub repo id (those look like 'org/name') nor a folder under "
        "checkpoints/ or VGEN_MODEL_ROOTS"
    )


def _check_revision(revision: str) -> None:
    problem = None
    if not revision:
        problem = "is empty"
    elif len(revision) > 255:
        problem = "is longer than 255 characters"
    elif _BAD_REVISION_CHARS.search(revision):
        problem = "contains whitespace or one of ~^:?*[\\"
    elif ".." in revision or "@{" in revision or "//" in revision:
        problem = "contains '..', '//' or '@{'"
    elif revision.startswith(("/", "-")) or revision.endswith(("/", ".", ".lock")):
        problem = "starts with '/' or '-', or ends with '/', '.' or '.lock'"
    if problem:
        raise _invalid(
            f"The revision {revision!r} {problem}; a revision is a branch, tag or commit hash "
            "such as 'main', 'v1.0' or 'refs/pr/1'"
        )


def _parse_hub_id(text: str) -> ModelRef:
    repo_id, sep, revision = text.partition("@")
    if "/" not in repo_id:
        raise _invalid(f"{text!r} is not a Hub repo id: Hub ids need an owner, as in 'org/name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise _invalid(
            f"{repo_id!r} is not a valid Hub repo id: it must be 'org/name' (one '/'), each part made of "
            "letters, digits, '-', '_' and '.', not starting or ending with '-' or '.', without '--' "
            "or '..', name at most 96 characters"
        ) from None
    if sep:
        _check_revision(revision)
    return ModelRef(repo_id=repo_id, revision=revision if sep else None)


def parse_reference(text: str) -> ModelRef:
    """Validate user text and turn it into a :class:`ModelRef` (see the module docstring for forms).

    Surrounding whitespace is stripped first; any remaining control character (NUL, newline, ...)
    is refused. Text that looks like a path (starts with ``/``, ``.``, ``~`` or ``checkpoints/``, or
    contains a backslash) must name an existing folder inside an allowed root. Raises
    :class:`InvalidModelReferenceError` otherwise.
    """
    if not isinstance(text, str):
        raise _invalid(f"A model reference must be text, not {type(text).__name__}")
    if "\x00" in text:
        raise _invalid("The model reference contains a NUL character")
    text = text.strip()
    if not text:
        raise _invalid("The model reference is empty")
    if _CONTROL_CHARS.search(text):
        raise _invalid(f"The model reference {text!r} contains a control character (newline, tab, ...)")
    if _looks_like_path(text):
        return _parse_local_path(text)
    if "/" not in text and "@" not in text:
        return _parse_bare_name(text)
    return _parse_hub_id(text)


def _coerce(reference: str | ModelRef) -> ModelRef:
    """Parse text; re-validate a ModelRef (it may have been built by hand, bypassing the checks)."""
    return parse_reference(str(reference) if isinstance(reference, ModelRef) else reference)


# --------------------------------------------------------------------------------------------------
# Which files a pipeline needs
# --------------------------------------------------------------------------------------------------


def pipeline_allow_patterns(variant: str | None = None) -> list[str]:
    """``allow_patterns`` (fnmatch, as ``snapshot_download`` uses them) for what a pipeline loads.

    Configs (``*.json``: ``model_index.json``, component ``config.json``, index files), tokenizer
    files (``*.txt``, ``*.model``, ``*.tiktoken``, ``tokenizer.json``), the model card
    (``README.md``) and the standard safetensors weight names diffusers and transformers look
    for (``diffusion_pytorch_model*.safetensors``, ``model*.safetensors``, sharded or not). With ``variant="fp16"`` only the ``.fp16`` weight files
    match; with no variant only the non-variant ones. Pickle weights, ONNX/Flax/TF files and Python
    code never match.

    fnmatch's ``*`` also crosses ``/``, so these patterns cannot limit depth; :func:`resolve` applies
    a stricter per-file selection on top (one folder level, per-component fp16 fallback).
    """
    if variant not in (None, "fp16"):
        raise ValueError(f"Unknown weight variant {variant!r}; vgen supports None or 'fp16'.")
    infix = ".fp16" if variant else ""
    weights = []
    for stem in _WEIGHT_STEMS:
        for prefix in ("", "*/"):
            weights.append(f"{prefix}{stem}{infix}.safetensors")
            weights.append(f"{prefix}{stem}{infix}-*-of-*.safetensors")
    return [*_SUPPORT_PATTERNS, *weights]


def _weight_variant(path: str) -> str | None | bool:
    """``None``/``"fp16"`` for a loadable safetensors weight file, ``False`` for any other file."""
    match = _WEIGHT_FILE.fullmatch(PurePosixPath(path).name)
    if match is None:
        return False
    return "fp16" if match.group("variant") else None


def _loadable_weights(paths: Sequence[str]) -> dict[str, dict[str | None, list[str]]]:
    """Loadable weight files by component folder, then by variant (None or "fp16").

    Only files at most one folder deep count, and top-level weights of a pipeline repo do not: a
    ``model_index.json`` repo loads its weights from component folders.
    """
    is_pipeline = "model_index.json" in paths
    weights: dict[str, dict[str | None, list[str]]] = {}
    for path in paths:
        parts = PurePosixPath(path).parts
        variant = _weight_variant(path)
        if variant is False or len(parts) > 2 or (is_pipeline and len(parts) == 1):
            continue
        weights.setdefault(str(PurePosixPath(path).parent), {}).setdefault(variant, []).append(path)
    return weights


def _variant_candidates(paths: Sequence[str], prefer_fp16: bool) -> list[str | None]:
    """Variants that could load this file set, best first.

    fp16 is an option only if fp16 weight files exist; it becomes the only option when some
    component has fp16 weights but no full-precision ones (loading it needs ``variant="fp16"``).
    """
    components = _loadable_weights(paths).values()
    if not any("fp16" in by_variant for by_variant in components):
        return [None]
    if any(None not in by_variant for by_variant in components):
        return ["fp16"]
    return ["fp16", None] if prefer_fp16 else [None, "fp16"]


def _select_files(paths: Sequence[str], variant: str | None) -> list[str]:
    """The exact files to fetch from a repo listing for ``variant``.

    Support files (configs, tokenizer files) at most one folder deep, plus per component folder the
    chosen variant's weights if it has them, else the other variant's, as diffusers itself does.
    Top-level ``.safetensors`` of a pipeline repo (single-file checkpoints of several GB), other
    variants (non_ema, ...) and anything else are left out.
    """
    selected = [
        path
        for path in paths
        if len(PurePosixPath(path).parts) <= 2
        and _weight_variant(path) is False
        and any(fnmatch.fnmatchcase(path, pattern) for pattern in _SUPPORT_PATTERNS)
    ]
    for by_variant in _loadable_weights(paths).values():
        selected += by_variant.get(variant) or next(iter(by_variant.values()))
    return sorted(selected)


def _refuse_pickle_only(paths: Sequence[str], where: str) -> None:
    if _loadable_weights(paths):
        return
    pickles = sorted(path for path in paths if path.endswith(_PICKLE_SUFFIXES))
    if pickles:
        shown = ", ".join(pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise UnsafeWeightsError(
            f"{where} only has pickle weights ({shown}); vgen only loads .safetensors weights, because "
            "loading a pickle file can run arbitrary code. Use a repo or revision that ships "
            ".safetensors weights (or convert the weights yourself from a trusted copy)."
        )


def _is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def _relative_files(folder: Path) -> list[str]:
    """Files at the top level and one folder down, as posix paths relative to ``folder``."""
    files = []
    for entry in folder.iterdir():
        if entry.is_file():
            files.append(entry.name)
        elif entry.is_dir():
            files += [f"{entry.name}/{child.name}" for child in entry.iterdir() if child.is_file()]
    return files


# --------------------------------------------------------------------------------------------------
# Environment (re-read at call time: huggingface_hub.constants is frozen at import)
# --------------------------------------------------------------------------------------------------


def _is_true(value: str) -> bool:
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline_mode() -> bool:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:
            return _is_true(value)
    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or constants.ENDPOINT


def _cache_dir() -> str:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expandvars(os.path.expanduser(os.environ[name]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return constants.HF_HUB_CACHE


def _display_endpoint(endpoint: str) -> str:
    """The endpoint without any user:password@ part, fit for messages."""
    parts = urlsplit(endpoint)
    if parts.username is None and parts.password is None:
        return endpoint
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


# --------------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------------


def _transport_error_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(transport, timeout, connect) exception classes of the HTTP clients huggingface_hub may use."""
    transport, timeout, connect = [], [], []
    for module_name in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2; 1.x used httpx
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        transport.append(module.TransportError)
        timeout.append(module.TimeoutException)
        connect.append(module.ConnectError)
    return tuple(transport), tuple(timeout), tuple(connect)


_TRANSPORT, _TIMEOUT, _CONNECT = _transport_error_types()


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the Hub cannot be reached" (so the local cache may stand in)."""
    for cause in _causes(exc):
        if isinstance(cause, (*_TRANSPORT, hf_errors.OfflineModeIsEnabled, hf_errors.RevisionResolutionError)):
            return True
        if isinstance(cause, hf_errors.HfHubHTTPError) and cause.response is not None:
            if cause.response.status_code >= 500 or cause.response.status_code == 429:
                return True
    return False


def _unreachable_error(ref: ModelRef, exc: BaseException, endpoint: str, cache_dir: str) -> ModelError:
    """Error for "the Hub could not be used and the model is not cached"."""
    where = _display_endpoint(endpoint)
    not_cached = f"{ref} is not in the local cache (HF_HUB_CACHE={cache_dir})"
    for cause in _causes(exc):
        if isinstance(cause, hf_errors.OfflineModeIsEnabled):
            return OfflineError(
                f"{not_cached} and the Hub is offline (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE "
                "and run once with network access to download it."
            )
        if isinstance(cause, _TIMEOUT):
            return NetworkError(
                f"The Hub at {where} did not answer in time while fetching {ref}, and {not_cached}. "
                "Check the network (or HF_ENDPOINT) and try again."
            )
        if isinstance(cause, _CONNECT):
            return OfflineError(
                f"{not_cached} and the Hub at {where} cannot be reached (connection failed); "
                "connect to the network (or fix HF_ENDPOINT) and try again."
            )
        if isinstance(cause, hf_errors.HfHubHTTPError) and cause.response is not None:
            return NetworkError(
                f"The Hub at {where} answered HTTP {cause.response.status_code} while fetching {ref}, "
                f"and {not_cached}. Try again later."
            )
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):
        return OfflineError(f"{not_cached} and the Hub at {where} could not be used; try again with network access.")
    return NetworkError(f"Could not reach the Hub at {where} while fetching {ref}, and {not_cached}.")


def _scrub(text: str, token: str | None) -> str:
    for secret in (token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _map_hub_error(
    exc: BaseException, ref: ModelRef, *, endpoint: str, cache_dir: str, token: str | None = None
) -> BaseException:
    """Translate a huggingface_hub / network exception into the vgen error a user can act on."""
    if isinstance(exc, VgenError):
        return exc  # ours already (e.g. CancelledError raised by a progress callback)
    where = _display_endpoint(endpoint)
    page = f"{where}/{ref.repo_id}"
    if isinstance(exc, hf_errors.GatedRepoError):
        return GatedModelError(
            f"{ref.repo_id} is gated: open {page} while logged in, accept its terms, then set HF_TOKEN "
            "(or pass token=) to an access token of that account."
        )
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        # Some mirrors (olah) also answer this way for an unknown revision of an existing repo.
        maybe_revision = f", or it has no revision {ref.revision!r}" if ref.revision else ""
        return ModelNotFoundError(
            f"Repo {ref.repo_id} not found on the Hub at {where} (or it is private: set HF_TOKEN to a token "
            f"with access{maybe_revision}). Check the spelling 'org/name'."
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"Repo {ref.repo_id} has no revision {ref.revision or _DEFAULT_REVISION!r} on the Hub at {where}; "
            "use an existing branch, tag or commit hash (see its 'Files and versions' tab)."
        )
    if isinstance(exc, hf_errors.DisabledRepoError):
        return ModelNotFoundError(f"Repo {ref.repo_id} has been disabled on the Hub at {where}.")
    if isinstance(exc, hf_errors.LocalEntryNotFoundError) or _is_unreachable(exc):
        return _unreachable_error(ref, exc, endpoint, cache_dir)
    if isinstance(exc, hf_errors.EntryNotFoundError):
        return ModelError(f"A file of {ref} disappeared from the Hub during the download; try again.")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return ModelError(f"The Hub at {where} refused {ref} (HTTP {status}): {_scrub(str(exc), token)[:300]}")
    if isinstance(exc, OSError):
        return ModelError(
            f"Could not store {ref} in the Hub cache (HF_HUB_CACHE={cache_dir}): {_scrub(str(exc), token)}"
        )
    return exc


def _raise_mapped(exc: BaseException, ref: ModelRef, **context) -> NoReturn:
    mapped = _map_hub_error(exc, ref, **context)
    if mapped is exc:
        raise exc
    raise mapped from exc


# --------------------------------------------------------------------------------------------------
# Progress forwarding
# --------------------------------------------------------------------------------------------------


class _ProgressTracker:
    """Sums the progress bars snapshot_download opens into :class:`DownloadProgress` events.

    Callbacks run on download threads, serialized by a lock. If a callback raises (for instance
    :class:`vgen.errors.CancelledError`), every later update raises the same exception, so all
    download threads stop and the exception reaches the caller of :func:`resolve`.
    """

    def __init__(self, callback: Callable[[DownloadProgress], None], files_total: int,
                 bytes_total: int | None, bytes_cached: int) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._files_total = files_total
        self._bytes_total = bytes_total
        self._files_done = 0
        self._bytes_done = bytes_cached
        self._error: BaseException | None = None

    def _emit(self) -> None:
        if self._error is not None:
            raise self._error
        event = DownloadProgress(self._files_done, self._files_total, self._bytes_done, self._bytes_total, None)
        try:
            self._callback(event)
        except BaseException as exc:
            self._error = exc
            raise

    def start(self) -> None:
        with self._lock:
            self._emit()

    def add(self, *, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self._files_done = min(self._files_total, self._files_done + files)
            self._bytes_done += nbytes
            self._emit()

    def finish(self) -> None:
        with self._lock:
            self._files_done = self._files_total
            self._emit()

    def bar_class(self) -> type:
        """A tqdm class for ``snapshot_download(tqdm_class=...)`` that draws nothing and reports here.

        snapshot_download opens three bars: per-file completion (unit "it"), bytes written (unit "B")
        and network transfer bytes (name/desc "...transfer"/"Downloading bytes"; ignored, because
        written bytes are what match file sizes).
        """
        tracker = self

        class _ForwardingBar(hf_tqdm):
            def __init__(self, *args, **kwargs):
                name = str(kwargs.get("name") or "")
                desc = str(kwargs.get("desc") or "")
                if kwargs.get("unit", "it") != "B":
                    role = "files"
                elif name.endswith(".transfer") or desc.startswith("Downloading bytes"):
                    role = None
                else:
                    role = "bytes"
                kwargs["disable"] = True  # draw nothing; counting happens in update()
                super().__init__(*args, **kwargs)
                self._vgen_role = role

            def update(self, n=1):
                role = getattr(self, "_vgen_role", None)
                if role == "files":
                    tracker.add(files=int(n or 0))
                elif role == "bytes":
                    tracker.add(nbytes=int(n or 0))
                return None

        return _ForwardingBar


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def _resolve_local(ref: ModelRef, prefer_fp16: bool) -> ResolvedModel:
    path = ref.local_path
    assert path is not None
    if not _is_model_folder(path):
        raise UnsupportedModelError(
            f"{path} has no model_index.json (diffusers pipeline) or config.json (single model) at its top "
            "level, so it is not a model folder vgen can load."
        )
    files = _relative_files(path)
    _refuse_pickle_only(files, str(path))
    return ResolvedModel(ref=ref, path=path, commit="local", variant=_variant_candidates(files, prefer_fp16)[0])


def _exact_patterns(paths: Iterable[str]) -> list[str]:
    return [glob.escape(path) for path in paths]


def _resolve_from_cache(ref: ModelRef, prefer_fp16: bool, cache_dir: str) -> ResolvedModel | None:
    """The cached snapshot of a Hub ref, without any network access; None if not (completely) cached.

    With the tree listing huggingface_hub caches next to each snapshot, the same file selection as
    online is checked for completeness (preferred variant first, then the other). Without it, the
    snapshot folder is taken as it is if it holds a model.
    """
    assert ref.repo_id is not None
    revision = ref.revision or _DEFAULT_REVISION
    common = dict(repo_id=ref.repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
    try:
        paths = [f.path for f in get_cached_repo_tree(ref.repo_id, revision=revision, cache_dir=cache_dir)]
    except (hf_errors.CachedRepoTreeNotFoundError, OSError, ValueError):
        paths = None
    if paths is None:
        try:
            folder = Path(snapshot_download(**common, allow_patterns=pipeline_allow_patterns(None)))
        except (hf_errors.LocalEntryNotFoundError, OSError, ValueError):
            return None
        if not _is_model_folder(folder):
            return None
        variant = _variant_candidates(_relative_files(folder), prefer_fp16)[0]
        return ResolvedModel(ref=ref, path=folder, commit=folder.name, variant=variant)
    for variant in _variant_candidates(paths, prefer_fp16):
        try:
            folder = Path(snapshot_download(**common, allow_patterns=_exact_patterns(_select_files(paths, variant))))
        except (hf_errors.LocalEntryNotFoundError, OSError, ValueError):
            continue  # IncompleteSnapshotError is a LocalEntryNotFoundError
        if _is_model_folder(folder):
            return ResolvedModel(ref=ref, path=folder, commit=folder.name, variant=variant)
    return None


def _repo_files(api: HfApi, repo_id: str, commit: str, cache_dir: str) -> dict[str, int | None]:
    """path -> size of every file at ``commit`` (from the cached listing when there is one)."""
    try:
        entries = get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache_dir)
    except (hf_errors.CachedRepoTreeNotFoundError, OSError, ValueError):
        entries = api.list_repo_tree(repo_id, revision=commit, recursive=True)
    return {entry.path: entry.size for entry in entries if isinstance(entry, RepoFile)}


def _cached_bytes(repo_id: str, commit: str, files: dict[str, int | None], cache_dir: str) -> int:
    """Bytes of ``files`` already present in the snapshot of ``commit`` (no network)."""
    return sum(
        size or 0
        for path, size in files.items()
        if isinstance(try_to_load_from_cache(repo_id, path, cache_dir=cache_dir, revision=commit), str)
    )


def _resolve_hub(ref: ModelRef, prefer_fp16: bool, progress: Callable[[DownloadProgress], None] | None,
                 token: str | None) -> ResolvedModel:
    assert ref.repo_id is not None
    endpoint, cache_dir = _endpoint(), _cache_dir()
    if _offline_mode():
        cached = _resolve_from_cache(ref, prefer_fp16, cache_dir)
        if cached is not None:
            return cached
        raise OfflineError(
            f"{ref} is not in the local cache (HF_HUB_CACHE={cache_dir}) and the Hub is offline "
            "(HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE and run once with network access to download it."
        )

    api = HfApi(endpoint=endpoint, token=token)
    try:
        # resolve_revision pins one commit for the listing and the download, and records
        # refs/<revision> in the cache so the snapshot is found again offline.
        revision = api.resolve_revision(
            ref.repo_id, revision=ref.revision or _DEFAULT_REVISION, cache_dir=cache_dir, token=token
        )
        files = _repo_files(api, ref.repo_id, revision.resolved, cache_dir)
    except Exception as exc:
        if not isinstance(exc, VgenError) and _is_unreachable(exc):
            cached = _resolve_from_cache(ref, prefer_fp16, cache_dir)
            if cached is not None:
                logger.warning("Hub at %s unreachable; using cached %s@%s", _display_endpoint(endpoint),
                               ref.repo_id, cached.commit)
                return cached
        _raise_mapped(exc, ref, endpoint=endpoint, cache_dir=cache_dir, token=token)

    paths = sorted(files)
    _refuse_pickle_only(paths, f"Repo {ref}")
    if "model_index.json" not in files and "config.json" not in files:
        raise UnsupportedModelError(
            f"Repo {ref} has no model_index.json (diffusers pipeline) or config.json (single model) at its "
            "top level, so it is not a model vgen can load."
        )
    variant = _variant_candidates(paths, prefer_fp16)[0]
    selected = _select_files(paths, variant)

    tqdm_class = None
    tracker = None
    if progress is not None:
        sizes = [files[path] for path in selected]
        bytes_total = None if any(size is None for size in sizes) else sum(sizes)  # type: ignore[arg-type]
        selected_sizes = {path: files[path] for path in selected}
        tracker = _ProgressTracker(progress, len(selected), bytes_total,
                                   _cached_bytes(ref.repo_id, revision.resolved, selected_sizes, cache_dir))
        tracker.start()
        tqdm_class = tracker.bar_class()
    try:
        folder = snapshot_download(
            ref.repo_id,
            revision=revision,
            cache_dir=cache_dir,
            endpoint=endpoint,
            token=token,
            allow_patterns=_exact_patterns(selected),
            tqdm_class=tqdm_class,
        )
    except Exception as exc:
        _raise_mapped(exc, ref, endpoint=endpoint, cache_dir=cache_dir, token=token)
    if tracker is not None:
        tracker.finish()
    path = Path(folder)
    return ResolvedModel(ref=ref, path=path, commit=path.name, variant=variant)


def resolve(
    reference: str | ModelRef,
    *,
    prefer_fp16: bool = False,
    progress: Callable[[DownloadProgress], None] | None = None,
    token: str | None = None,
) -> ResolvedModel:
    """Make ``reference`` available as a local folder and say which commit and weight variant it is.

    Local folders are checked (model_index.json or config.json present, not pickle-only) and
    returned with commit ``"local"``. Hub repos are listed at the revision, refused if they only
    ship pickle weights, and then only the files a pipeline needs are downloaded into the Hub cache
    (fp16 weights when ``prefer_fp16`` and the repo has them). A cached snapshot is reused without
    re-downloading. Offline (``HF_HUB_OFFLINE``) or with the Hub unreachable, the cache is used
    alone; if the model is not there, :class:`OfflineError` (or :class:`NetworkError` on timeouts).

    ``progress`` is called during Hub resolution (see :class:`DownloadProgress`), from download
    threads; raise from it (e.g. :class:`vgen.errors.CancelledError`) to stop the download.
    ``token`` overrides ``HF_TOKEN`` / the saved login; it never appears in error messages.
    """
    ref = _coerce(reference)
    if ref.is_local:
        return _resolve_local(ref, prefer_fp16)
    return _resolve_hub(ref, prefer_fp16, progress, token)


def is_cached(reference: str | ModelRef) -> bool:
    """Whether :func:`resolve` would succeed without the network.

    True for a local reference that is a model folder, and for a Hub reference whose snapshot at
    the revision is completely in the cache (either weight variant). Never touches the network.
    Malformed references raise :class:`InvalidModelReferenceError`, as in :func:`resolve`.
    """
    ref = _coerce(reference)
    if ref.is_local:
        return ref.local_path is not None and _is_model_folder(ref.local_path)
    return _resolve_from_cache(ref, False, _cache_dir()) is not None
