"""One error hierarchy for the engine. Every message says what was wrong and what is allowed.

Every error class vgen defines lives here (huggingface_hub's single ``errors.py`` is the model).
Each class also subclasses the builtin a caller would expect (ValueError for bad input,
RuntimeError for failures, TimeoutError for the time limit), so plain ``except ValueError``
keeps working.

Every class pickles: job results and errors come back from the engine's worker process
(``vgen.worker``) as plain pickle. :meth:`VgenError.__reduce_ex__` rebuilds an error from its
message and its extra attributes, as ``huggingface_hub.errors.HfHubHTTPError.__reduce_ex__``
does, so a subclass may take keyword-only attributes in ``__init__`` (the default exception
pickling would call ``cls(*args)`` and lose them, or fail on a required keyword). The
convention: every attribute ``__init__`` stores is one of its keyword arguments, of that name.
"""

from __future__ import annotations

from typing import Any


class VgenError(Exception):
    """Base of every error the engine raises on purpose."""

    @classmethod
    def _rebuild(cls, message: str, attributes: dict[str, Any]) -> "VgenError":
        return cls(message, **attributes)

    def __reduce_ex__(self, protocol):
        """Pickle as ``cls(message, **attributes)`` (huggingface_hub's ``__reduce_ex__``): the
        message and what ``__init__`` stored; not the traceback, cause or notes."""
        attributes = {k: v for k, v in vars(self).items() if not k.startswith("__")}
        return (self.__class__._rebuild, (str(self), attributes))


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
    """The job was cancelled by its user (Stop, or the client went away). No builtin base:
    a Stop is not a failure, and ``except RuntimeError`` around a job must not swallow it."""


class TimeLimitError(VgenError, TimeoutError):
    """The job ran past the per-request time limit (``vgen.jobs.JobControl.check``)."""

    def __init__(self, message: str, *, limit_s: float | None = None):
        super().__init__(message)
        self.limit_s = limit_s  # the limit that was passed, seconds


class EngineCrashedError(VgenError, RuntimeError):
    """The engine's worker process (``vgen.worker``) stopped while it ran a job."""

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code  # the worker's exit status (negative: killed by that signal)


class FastDecoderUnavailableError(ModelError):
    """The tiny autoencoder for fast decoding (``vgen.decoders``) could not be fetched or
    loaded."""


class BackboneUnavailableError(ModelError):
    """A feature backbone's weights (``vgen.backbones``) could not be fetched or loaded (the
    generator's own feature views do not need them)."""


class CaptionParseError(VgenError, ValueError):
    """The text is not a description the shapes grammar can write (``vgen.shapes.captions``)."""


class BusyError(VgenError, RuntimeError):
    """The server is at capacity; try again shortly."""


class SessionBusyError(BusyError):
    """This browser session (or API client) already has as many jobs queued or running as one
    session may have (``VGEN_SESSION_JOBS``); wait for one to finish."""


class InvalidLayoutError(InvalidRequestError):
    """A layout (objects in boxes, ``vgen.layout``) cannot be used; ``field`` names the part that
    is wrong, e.g. ``objects[2].box[1]`` or ``background``."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


class PlanParseError(InvalidRequestError):
    """A layout planner's output is not a layout; the message shows the raw text."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.raw = raw
