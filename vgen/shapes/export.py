"""What every embedded-model trainer shares at export and at stop: a model folder is written
beside its final place and swapped in whole, and SIGTERM/SIGINT end a run cleanly."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable


def partial_folder(final: str | Path) -> Path:
    """An empty ``NAME.partial`` folder beside ``final`` to write the export into."""
    final = Path(final)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, final: str | Path, meta: dict, write_card: Callable[[Path], Path]) -> Path:
    """Finish an export written to ``tmp`` and swap it in for ``final``: ``training.json``, the
    scores of the previous export (kept until re-evaluated), the model card. The app or a commit
    never sees half a model."""
    final = Path(final)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    if (final / "eval.json").exists():
        shutil.copy2(final / "eval.json", tmp / "eval.json")
    write_card(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM/SIGINT end the run after the current step, with the state saved and the weights
    exported: a session that must stop keeps every step trained so far. The previous handlers
    are back afterwards, so a caller in the same process (a test, a notebook) keeps its Ctrl-C."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, lambda *_: flag.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
