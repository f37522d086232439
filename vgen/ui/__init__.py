"""vgen's web UI: a Gradio Blocks app over the engine, and the only package that imports gradio.

It never imports torch: jobs run in the engine's worker processes (``vgen.worker``) and come
back as plain results (images, numpy maps) that the UI renders. ``main`` serves it
(``python app.py``); ``demo.build_demo`` builds it without serving (tests, Spaces).
"""

from .server import main

__all__ = ["main"]
