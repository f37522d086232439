"""The web server never imports torch: what it needs to build requests and to unpickle and render
job results (attention maps, overlays, grids, masks, the filmstrip, compare grids) is torch-free.
Checked in a fresh interpreter, since this test process has torch loaded."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

from vgen.attention import inspect_generation
from vgen.requests import GenerateRequest

REPO = Path(__file__).resolve().parent.parent
SERVER_SIDE = ("vgen.attention_maps", "vgen.viz", "vgen.compare_grid", "vgen.compare", "vgen.requests",
               "vgen.metadata", "vgen.config", "vgen.errors", "vgen.worker")


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_server_side_modules_import_without_torch():
    out = _python(f"""
        import sys
        for name in {SERVER_SIDE!r}:
            __import__(name)
        heavy = [m for m in ("torch", "diffusers", "transformers", "gradio") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
        """)
    assert out.strip() == "ok"


def test_an_inspection_unpickles_and_renders_without_torch(tiny_env, tmp_path):
    """A real Inspection (maps and denoising path of the tiny model), as the worker sends it."""
    out = inspect_generation(GenerateRequest(prompt="a red circle", steps=2, seed=0), maps=True, path=True)
    blob = tmp_path / "inspection.pickle"
    blob.write_bytes(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    expected = out.maps.map(out.maps.word_keys()[-1])
    ref = tmp_path / "map.npy"
    import numpy as np

    np.save(ref, expected)
    printed = _python("""
        import pickle, sys
        import numpy as np
        inspection = pickle.loads(open(sys.argv[1], "rb").read())
        maps, image = inspection.maps, inspection.result.images[0]
        key = maps.word_keys()[-1]
        grid = maps.grid(image, cell_size=64)
        overlay = maps.overlay(image, key)
        mask = maps.to_mask(key, 0.5)
        from vgen.viz import filmstrip
        strip = filmstrip(inspection.path[0], cell_size=32)
        assert np.allclose(maps.map(key), np.load(sys.argv[2]), atol=1e-5)
        assert "torch" not in sys.modules, "unpickling or rendering imported torch"
        print(type(inspection).__module__, grid.size[0] > 64, overlay.size, mask.mode, strip.size[0] >= 64)
        """, str(blob), str(ref))
    assert printed.split() == ["vgen.attention_maps", "True", "(64,", "64)", "L", "True"]
