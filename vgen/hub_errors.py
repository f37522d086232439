"""Hub and network failures as the :mod:`vgen.errors` class a user can act on
(``vgen.hub.resolve`` raises them). Messages say what went wrong and what to do, and never
contain the access token or the password of an endpoint URL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Iterable, NoReturn
from urllib.parse import urlsplit, urlunsplit

from huggingface_hub import errors as hf_errors
from huggingface_hub.constants import DEFAULT_REVISION

from . import config
from .errors import (
    GatedModelError,
    ModelError,
    ModelNotFoundError,
    NetworkError,
    OfflineError,
    RevisionNotFoundError,
    VgenError,
)

if TYPE_CHECKING:
    from .hub import ModelRef


def display_endpoint(endpoint: str) -> str:
    """The endpoint without any user:password@ part, fit for messages."""
    parts = urlsplit(endpoint)
    if parts.username is None and parts.password is None:
        return endpoint
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=host))


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


def is_unreachable(exc: BaseException) -> bool:
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
    where = display_endpoint(endpoint)
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
    for secret in (token, *config.hf_tokens()):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def map_hub_error(
    exc: BaseException, ref: ModelRef, *, endpoint: str, cache_dir: str, token: str | None = None
) -> BaseException:
    """Translate a huggingface_hub / network exception into the vgen error a user can act on."""
    if isinstance(exc, VgenError):
        return exc  # ours already (e.g. CancelledError raised by a progress callback)
    where = display_endpoint(endpoint)
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
            f"Repo {ref.repo_id} has no revision {ref.revision or DEFAULT_REVISION!r} on the Hub at {where}; "
            "use an existing branch, tag or commit hash (see its 'Files and versions' tab)."
        )
    if isinstance(exc, hf_errors.DisabledRepoError):
        return ModelNotFoundError(f"Repo {ref.repo_id} has been disabled on the Hub at {where}.")
    if isinstance(exc, hf_errors.LocalEntryNotFoundError) or is_unreachable(exc):
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


def raise_mapped(exc: BaseException, ref: ModelRef, **context) -> NoReturn:
    mapped = map_hub_error(exc, ref, **context)
    if mapped is exc:
        raise exc
    raise mapped from exc
