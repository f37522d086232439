"""vgen's web UI: a Gradio Blocks app over the engine, and the only package that imports gradio.

It never imports torch: jobs run in the engine's worker processes (``vgen.worker``) and come
back as plain results (images, numpy maps) that the UI renders. ``main`` serves it
(``python app.py``); ``demo.build_demo`` builds it without serving (tests, Spaces).
"""

from __future__ import annotations

import os

from vgen import config

__all__ = ["main"]


def main() -> None:
    """Serve the app. The engine's first worker process starts before gradio is imported
    (seconds of this process's start), so the worker's warm-up (importing the engine, loading
    the default model) runs on the other core while the web server imports and starts."""
    pool = None
    if config.engine_process() and not config.zero_gpu() and os.name == "posix":
        from vgen.worker import EnginePool

        pool = EnginePool(warm_up=config.warm_up())
    from .server import main as serve

    serve(pool)
