"""Per-job progress, cancel and time limit, hooked in through diffusers' step-end callback.

A ``JobControl`` belongs to one job (one user's request), never to the process: Stop on one
user's job sets only that job's event. Cancel is cooperative and checked after every denoising
step, so a cancelled job stops within one step and frees its worker.

The time limit bounds the work a request asks for (encoding, denoising), not the wait for a
model: the engine calls :meth:`JobControl.restart` once it holds the loaded model, so neither a
first download nor the wait behind another job on the same model counts against it. (A download
still stops on cancel, checked between chunks.)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .errors import CancelledError, TimeLimitError


@dataclass
class JobControl:
    """Hooks of one job. ``progress(step, total)`` is called once per denoising step (1-based);
    ``on_step(pipe, step, timestep, callback_kwargs)`` lets features observe the latents;
    ``preview(step, total, image)`` receives live previews (PIL) of the first image, decoded
    by the engine with a cheap decoder when that costs little (see ``vgen.decoders``);
    ``text(i, text)`` the text so far of variant ``i`` of a prompt expansion (``vgen.expand``);
    ``adapt()`` is called by the job's thread when the model is ready and after every step
    (``vgen.cpu_share.CpuShare.adjust``: fewer threads while other processes hold cores)."""

    progress: Callable[[int, int], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    time_limit_s: float | None = None
    on_step: Callable[[Any, int, Any, dict], None] | None = None
    download: Callable[[Any], None] | None = None  # hub.DownloadProgress updates
    preview: Callable[[int, int, Any], None] | None = None
    text: Callable[[int, str], None] | None = None
    adapt: Callable[[], Any] | None = None
    started: float = field(default_factory=time.monotonic)

    def keeping_threads(self, limit: int | None) -> JobControl:
        """This control for a job held to ``limit`` compute threads (a model's
        ``vgen.cpu_share.job_threads``): a copy, sharing the cancel event, that leaves the
        thread count alone, so a seed's image does not depend on the load; itself for None."""
        return self if limit is None else replace(self, adapt=None)

    def restart(self) -> None:
        """Start the time-limit clock now (the engine calls this when the model is ready)."""
        self.started = time.monotonic()
        if self.adapt is not None:
            self.adapt()

    def check(self) -> None:
        """Raise if the job was cancelled or ran out of time."""
        if self.cancel.is_set():
            raise CancelledError("the job was cancelled")
        if self.time_limit_s is not None and time.monotonic() - self.started > self.time_limit_s:
            raise TimeLimitError(
                f"the job ran past its time limit of {self.time_limit_s:.0f} s; "
                "ask for fewer steps, fewer images or a smaller size",
                limit_s=self.time_limit_s)

    def step_end_callback(self, total_hint: int, previewer: Callable | None = None):
        """A ``callback_on_step_end`` for diffusers pipelines. ``previewer`` (the engine's
        ``vgen.decoders.Previewer``) turns the step's latents into the image sent to
        ``preview`` when it says one is due."""

        def callback(pipe, i: int, t, kwargs: dict) -> dict:
            total = getattr(pipe, "num_timesteps", None) or total_hint
            if self.adapt is not None:
                self.adapt()
            if self.on_step is not None:
                self.on_step(pipe, i, t, kwargs)
            if self.progress is not None:
                self.progress(i + 1, total)
            self.check()
            if (self.preview is not None and previewer is not None and "latents" in kwargs
                    and previewer.due(i + 1, total)):
                self.preview(i + 1, total, previewer(kwargs["latents"]))
                self.check()
            return kwargs

        return callback
