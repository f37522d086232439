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

import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from huggingface_hub import (
    HfApi,
    RepoFile,
    constants,
    get_cached_repo_tree,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub import errors as hf_errors
from huggingface_hub.constants import DEFAULT_REVISION
from huggingface_hub.utils import HFValidationError, validate_repo_id

from . import config
from .errors import InvalidModelReferenceError, OfflineError, UnsupportedModelError, VgenError
from .hub_errors import display_endpoint, is_unreachable, raise_mapped
from .hub_files import (
    is_model_folder,
    pipeline_allow_patterns,
    refuse_pickle_only,
    relative_files,
    select_files,
    variant_candidates,
)
from .hub_progress import DownloadProgress, ProgressTracker

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR: Path = Path(__file__).resolve().parent.parent / "checkpoints"
"""Where locally trained models live; always an allowed local root."""

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BARE_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
# Git refuses these in ref names; the Hub inherits that. The revision also becomes a path under the
# cache's refs/ folder, so "..", a leading "/" and backslashes must never get through.
_BAD_REVISION_CHARS = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]")


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
    for entry in config.model_roots():
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
# Environment (vgen.config re-reads it at call time: huggingface_hub.constants is frozen at import)
# --------------------------------------------------------------------------------------------------


def _offline_mode() -> bool:
    offline = config.hf_offline()
    return bool(constants.HF_HUB_OFFLINE) if offline is None else offline


def _endpoint() -> str:
    return config.hf_endpoint() or constants.ENDPOINT


def _cache_dir() -> str:
    return config.hf_cache_dir() or constants.HF_HUB_CACHE


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def _resolve_local(ref: ModelRef, prefer_fp16: bool) -> ResolvedModel:
    path = ref.local_path
    assert path is not None
    if not is_model_folder(path):
        raise UnsupportedModelError(
            f"{path} has no model_index.json (diffusers pipeline) or config.json (single model) at its top "
            "level, so it is not a model folder vgen can load."
        )
    files = relative_files(path)
    refuse_pickle_only(files, str(path))
    return ResolvedModel(ref=ref, path=path, commit="local", variant=variant_candidates(files, prefer_fp16)[0])


def _exact_patterns(paths: Iterable[str]) -> list[str]:
    return [glob.escape(path) for path in paths]


def _resolve_from_cache(ref: ModelRef, prefer_fp16: bool, cache_dir: str) -> ResolvedModel | None:
    """The cached snapshot of a Hub ref, without any network access; None if not (completely) cached.

    With the tree listing huggingface_hub caches next to each snapshot, the same file selection as
    online is checked for completeness (preferred variant first, then the other). Without it, the
    snapshot folder is taken as it is if it holds a model.
    """
    assert ref.repo_id is not None
    revision = ref.revision or DEFAULT_REVISION
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
        if not is_model_folder(folder):
            return None
        variant = variant_candidates(relative_files(folder), prefer_fp16)[0]
        return ResolvedModel(ref=ref, path=folder, commit=folder.name, variant=variant)
    for variant in variant_candidates(paths, prefer_fp16):
        try:
            folder = Path(snapshot_download(**common, allow_patterns=_exact_patterns(select_files(paths, variant))))
        except (hf_errors.LocalEntryNotFoundError, OSError, ValueError):
            continue  # IncompleteSnapshotError is a LocalEntryNotFoundError
        if is_model_folder(folder):
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
            ref.repo_id, revision=ref.revision or DEFAULT_REVISION, cache_dir=cache_dir, token=token
        )
        files = _repo_files(api, ref.repo_id, revision.resolved, cache_dir)
    except Exception as exc:
        if not isinstance(exc, VgenError) and is_unreachable(exc):
            cached = _resolve_from_cache(ref, prefer_fp16, cache_dir)
            if cached is not None:
                logger.warning("Hub at %s unreachable; using cached %s@%s", display_endpoint(endpoint),
                               ref.repo_id, cached.commit)
                return cached
        raise_mapped(exc, ref, endpoint=endpoint, cache_dir=cache_dir, token=token)

    paths = sorted(files)
    refuse_pickle_only(paths, f"Repo {ref}")
    if "model_index.json" not in files and "config.json" not in files:
        raise UnsupportedModelError(
            f"Repo {ref} has no model_index.json (diffusers pipeline) or config.json (single model) at its "
            "top level, so it is not a model vgen can load."
        )
    variant = variant_candidates(paths, prefer_fp16)[0]
    selected = select_files(paths, variant)

    tqdm_class = None
    tracker = None
    if progress is not None:
        sizes = [files[path] for path in selected]
        bytes_total = None if any(size is None for size in sizes) else sum(sizes)  # type: ignore[arg-type]
        selected_sizes = {path: files[path] for path in selected}
        tracker = ProgressTracker(progress, len(selected), bytes_total,
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
        raise_mapped(exc, ref, endpoint=endpoint, cache_dir=cache_dir, token=token)
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
        return ref.local_path is not None and is_model_folder(ref.local_path)
    return _resolve_from_cache(ref, False, _cache_dir()) is not None
