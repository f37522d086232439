"""The import graph of issue #21: ``app.py -> vgen.ui -> engine``, never back.

- The engine (``vgen/`` outside ``vgen/ui``) imports no gradio nor its client: it serves the CLI
  and any UI (the bench drives the launched app through ``vgen.ui.api_timer``, a process of
  its own).
- ``vgen/ui`` never imports torch (nor diffusers or transformers, which load it): jobs run in
  the engine's worker processes, and what comes back is rendered from numpy and PIL.
- ``app.py`` only starts ``vgen.ui``.
- The running web server holds no torch after every endpoint has been used, attention maps and
  the denoising filmstrip rendered included (regression: ``/status`` and the Features tab's
  rendering once imported torch into the server).
"""

from __future__ import annotations

import ast
from pathlib import Path

from gradio_client import Client, handle_file
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
VGEN = REPO / "vgen"
TORCH_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors.torch")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions (absolute names)."""
    names: set[str] = set()
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_engine_imports_no_gradio():
    found = {f"{p.relative_to(REPO)}: {n}" for p in VGEN.rglob("*.py")
             if "ui" not in p.relative_to(VGEN).parts[:1]
             for n in _imports(p) if _top(n) in ("gradio", "gradio_client")}
    assert not found, sorted(found)


def test_the_ui_package_imports_no_torch():
    found = {f"{p.relative_to(REPO)}: {n}" for p in (VGEN / "ui").rglob("*.py")
             for n in _imports(p) if any(n == t or n.startswith(t + ".") for t in TORCH_LIBRARIES)}
    assert not found, sorted(found)


def _engine_modules_of_the_ui() -> list[str]:
    """The engine modules ``vgen/ui`` imports (``from vgen.x import y`` counts as ``vgen.x``)."""
    out: set[str] = set()
    for p in (VGEN / "ui").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            modules = ([node.module] if isinstance(node, ast.ImportFrom) and not node.level
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            out |= {m for m in modules if m and m.startswith("vgen") and not m.startswith("vgen.ui")}
    return sorted(out)


def test_the_ui_package_uses_only_torch_free_engine_modules():
    """What vgen.ui imports from the engine imports no torch when loaded, either."""
    import subprocess
    import sys

    code = ("import importlib, sys\n"
            f"for m in {_engine_modules_of_the_ui()!r}:\n    importlib.import_module(m)\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_app_py_is_a_thin_entry_point():
    source = (REPO / "app.py").read_text()
    assert len(source.splitlines()) <= 40
    assert {_top(n) for n in _imports(REPO / "app.py")} == {"vgen"}


def _server_holds_torch(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "libtorch" in line or "/torch/lib/" in line})


def test_every_component_of_the_tab_bar_is_in_a_tab():
    """What test_browser.py's duplicate-tab regression came from: a component made in gr.Tabs
    itself, between two tabs."""
    import gradio as gr

    from vgen.ui.demo import build_demo

    demo = build_demo()
    bars = [b for b in demo.blocks.values() if isinstance(b, gr.Tabs)]
    assert bars and all(isinstance(child, gr.Tab) for bar in bars for child in bar.children), [
        type(child).__name__ for bar in bars for child in bar.children]


def test_the_first_worker_starts_before_gradio_is_imported():
    """Regression (issue #23, cold start): the worker was started after ``vgen.ui`` had imported
    gradio, so its warm-up began seconds late (cold start 14.3 s, 9.4 s once it started first)."""
    import os
    import subprocess
    import sys

    code = ("import sys, vgen.worker as w\n"
            "class Pool:\n"
            "    def __init__(self, warm_up):\n"
            "        raise SystemExit(3 if 'gradio' in sys.modules else 0)\n"
            "w.EnginePool = Pool\n"
            "import vgen.ui\n"
            "vgen.ui.main()\n"
            "raise SystemExit(4)  # the pool was never started\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SPACES_ZERO_GPU", "VGEN_ENGINE_PROCESS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_the_web_server_holds_no_torch_after_every_endpoint(hardened_app, tmp_path):
    client = Client(hardened_app.url, verbose=False, download_files=str(tmp_path))
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(source)
    client.predict(api_name="/status")
    client.predict("a red circle", steps=2, seed=1, randomize_seed=False, api_name="/generate")
    client.predict(handle_file(str(source)), "a blue circle", steps=2, api_name="/edit")
    client.predict("a red circle", steps=2, api_name="/attention")  # grid, filmstrip rendered
    client.predict("a red circle", "guidance", "1, 4", "none", "", steps=2, attention=True,
                   api_name="/compare")  # the labelled grid rendered
    status = client.predict(api_name="/status")
    assert status["torch"] and status["device"] == "cpu"  # told by the engine's worker
    assert not _server_holds_torch(hardened_app.pid), _server_holds_torch(hardened_app.pid)
