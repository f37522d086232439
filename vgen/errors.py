"""One error hierarchy for the engine. Every message says what was wrong and what is allowed.

Each class also subclasses the builtin a caller would expect (ValueError for bad input,
RuntimeError for failures), so plain ``except ValueError`` keeps working.
"""

from __future__ import annotations


class VgenError(Exception):
    """Base of every error the engine raises on purpose."""


class InvalidRequestError(VgenError, ValueError):
    """A request parameter is out of bounds or of the wrong kind."""


class InvalidImageError(InvalidRequestError):
    """An input image (or mask) cannot be used: wrong format, too large, truncated."""


class ModelError(VgenError, RuntimeError):
    """A model cannot be resolved, downloaded or loaded."""


class InvalidModelReferenceError(ModelError, ValueError):
    """The model reference is not a valid Hub repo id or allowed local folder."""


class ModelNotFoundError(ModelError):
    """The Hub has no such repo (or it is private and no token was given)."""


class GatedModelError(ModelError):
    """The repo is gated: it needs a token and accepted terms."""


class RevisionNotFoundError(ModelError):
    """The repo exists but has no such branch, tag or commit."""


class OfflineError(ModelError):
    """Offline (HF_HUB_OFFLINE or no network) and the model is not in the local cache."""


class NetworkError(ModelError):
    """The Hub could not be reached in time."""


class UnsafeWeightsError(ModelError):
    """The repo only offers pickle weights (.bin/.ckpt/.pt), which vgen never loads."""


class UnsupportedModelError(ModelError):
    """The repo is not a pipeline this engine can run for the asked task."""


class CancelledError(VgenError):
    """The job was cancelled by its user (Stop, or the client went away)."""


class BusyError(VgenError, RuntimeError):
    """The server is at capacity; try again shortly."""


class SessionBusyError(BusyError):
    """This browser session (or API client) already has as many jobs queued or running as one
    session may have (``VGEN_SESSION_JOBS``); wait for one to finish."""
