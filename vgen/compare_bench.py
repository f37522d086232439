"""Benchmark: a 3x3 comparison grid against the same nine images generated one by one through
the CLI's batch mode (``python -m vgen generate --prompts-file``).

``python -m vgen.compare_bench [--model REF] [--seed S] [--repeats N] [--json FILE]``

The grid is ``x = prompt`` (three shapes-world prompts) by ``y = guidance`` (three values
above 1), so every cell costs what one batch image costs (classifier-free guidance doubles
the UNet batch for any guidance above 1; steps, size and sampler are the model's defaults in
both). The batch file holds the same three prompts three times: nine images at the model's
default guidance. Two measurements, alternated ``--repeats`` times (the machine may be shared):

* **CLI, end to end**: wall time of ``python -m vgen compare ... --out grid.png --zip
  cells.zip`` against ``python -m vgen generate --prompts-file nine.txt --out-dir DIR`` in
  fresh processes (start-up and model loading included in both, as a user sees them);
* **engine, warm**: in this process, the model already loaded, ``vgen.compare_run.compare`` plus
  writing the grid PNG and the ZIP against ``vgen.batch.generate_file``.

Each is timed as wall clock and as CPU time (``getrusage`` of the child process for the CLI,
``time.process_time`` in process). On a machine other jobs share, wall times swing with their
load; the CPU time of a single-threaded run (``OMP_NUM_THREADS=1``, the default here) does not,
so it is the steadier figure. The figures are median ratios (grid / batch); the issue's bar is
1.3. It also checks that the grid's cells at the batch's guidance have the batch's pixels (same
prompt, seed and settings).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ("a red circle to the left of a blue square", "two yellow triangles",
           "a large green square at the top")
GUIDANCE = (3.0, 4.0, 6.0)  # all above 1: every cell runs classifier-free guidance


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cli(args: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of ``python -m vgen ARGS`` in a fresh process."""
    c0, t0 = _cpu_children(), time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vgen", *args], env=env, capture_output=True,
                       text=True)
    seconds, cpu = time.perf_counter() - t0, _cpu_children() - c0
    if p.returncode != 0:
        raise SystemExit(f"python -m vgen {' '.join(args[:2])} failed:\n{p.stderr[-2000:]}")
    return seconds, cpu


class _Timer:
    """Wall and CPU seconds of a block in this process."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        return False


def _timed_rounds(repeats: int, req, base, work: Path, prompts_file: Path, grid_args: list[str],
                  common: list[str], env: dict) -> tuple[list, list, list, list]:
    """(wall, CPU) seconds per repeat of: the CLI grid, the CLI batch, the engine grid and the
    engine batch, grid and batch taking turns at going first."""
    from .batch import generate_file
    from .compare_grid import save_grid, save_zip
    from .compare_run import compare

    cli_grid, cli_batch, eng_grid, eng_batch = [], [], [], []
    for i in range(repeats):
        order = ("grid", "batch") if i % 2 == 0 else ("batch", "grid")
        for which in order:
            if which == "grid":
                cli_grid.append(_cli(["compare", *grid_args,
                                      "--out", str(work / f"grid-{i}.png"),
                                      "--zip", str(work / f"cells-{i}.zip")], env))
                with _Timer() as t:
                    result = compare(req)
                    save_grid(result, work / f"grid-engine-{i}.png")
                    save_zip(result, work / f"cells-engine-{i}.zip")
                eng_grid.append((t.wall, t.cpu))
            else:
                cli_batch.append(_cli(["generate", "--prompts-file", str(prompts_file),
                                       "--out-dir", str(work / f"batch-{i}"), *common], env))
                with _Timer() as t:
                    generate_file(prompts_file, work / f"batch-engine-{i}", base)
                eng_batch.append((t.wall, t.cpu))
        print(f"repeat {i + 1}/{repeats} (wall / CPU s): CLI grid {cli_grid[-1][0]:.1f} / "
              f"{cli_grid[-1][1]:.1f}, batch {cli_batch[-1][0]:.1f} / {cli_batch[-1][1]:.1f}; "
              f"engine grid {eng_grid[-1][0]:.1f} / {eng_grid[-1][1]:.1f}, batch "
              f"{eng_batch[-1][0]:.1f} / {eng_batch[-1][1]:.1f}", flush=True)
    return cli_grid, cli_batch, eng_grid, eng_batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vgen.compare_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the default model (vgen-shapes)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from .batch import generate_file
    from .catalog import default_model, model_defaults
    from .compare import Axis, CompareRequest
    from .compare_run import compare
    from .pipelines import model_cache
    from .requests import GenerateRequest

    import numpy as np
    from PIL import Image

    model = a.model or default_model()
    work = Path(tempfile.mkdtemp(prefix="vgen-compare-bench-"))
    prompts_file = work / "nine.txt"
    prompts_file.write_text("\n".join(PROMPTS * 3) + "\n")
    x = "prompt=" + "|".join(PROMPTS)
    y = "guidance=" + ",".join(f"{g:g}" for g in GUIDANCE)
    common = ["--seed", str(a.seed), "--model", model]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    req = CompareRequest(GenerateRequest("", model=model, seed=a.seed),
                         Axis("prompt", PROMPTS), Axis("guidance", GUIDANCE))
    base = GenerateRequest("", model=model, seed=a.seed)

    # Warm-up (loads the model in this process) and the pixel check.
    loaded = model_cache().get(model)
    warm = compare(req)
    generate_file(prompts_file, work / "warm-batch", base)
    default_guidance = model_defaults(loaded).guidance  # what the batch (no --guidance) uses
    row = next((r for r, g in enumerate(GUIDANCE) if g == default_guidance), None)
    same = None
    if row is None:  # the model's default guidance is not on the grid
        pass
    else:
        batch_default = [np.asarray(Image.open(work / "warm-batch" / f"{i:04d}.png")) for i in range(3)]
        same = all(np.array_equal(np.asarray(warm.cells[row][c].image), batch_default[c]) for c in range(3))

    # The timed rounds, alternating which goes first.
    cli_grid, cli_batch, eng_grid, eng_batch = _timed_rounds(a.repeats, req, base, work, prompts_file,
                                                             ["--x", x, "--y", y, *common], common, env)

    def ratio(g, b, k):
        return statistics.median(gi[k] / bi[k] for gi, bi in zip(g, b))

    report = {
        "model": model, "seed": a.seed, "repeats": a.repeats, "grid": f"x={x} y={y}",
        "batch": f"{prompts_file.name}: the 3 prompts x 3 at the model's default guidance",
        "settings": {"steps": warm.cells[0][0].request.steps,
                     "size": f"{warm.cells[0][0].request.width}x{warm.cells[0][0].request.height}",
                     "default_guidance": default_guidance},
        "omp_num_threads": env.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
        "cli_seconds_wall_cpu": {"grid": cli_grid, "batch": cli_batch},
        "engine_seconds_wall_cpu": {"grid": eng_grid, "batch": eng_batch},
        "cli_ratio_median": {"wall": ratio(cli_grid, cli_batch, 0), "cpu": ratio(cli_grid, cli_batch, 1)},
        "engine_ratio_median": {"wall": ratio(eng_grid, eng_batch, 0),
                                "cpu": ratio(eng_grid, eng_batch, 1)},
        "cells_equal_batch_images": same,
        "bar": 1.3,
    }
    for name, key in (("CLI end to end", "cli_ratio_median"), ("engine, warm  ", "engine_ratio_median")):
        r = report[key]
        print(f"{name}: grid / batch = {r['cpu']:.3f} in CPU time, {r['wall']:.3f} in wall time "
              f"(medians of {a.repeats})")
    print(f"grid cells at guidance {default_guidance:g} identical to the batch images: {same}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
