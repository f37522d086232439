"""Download progress of a Hub resolution: huggingface_hub's progress bars summed into
:class:`DownloadProgress` events (``vgen.hub.resolve(progress=...)``; the app shows them while
a model downloads, and a job's Stop raises from the callback to end the download)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from huggingface_hub.utils import tqdm as hf_tqdm


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


class ProgressTracker:
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
