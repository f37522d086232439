"""The OpenVINO backend's tests (``tests/openvino_cases.py``) in a pytest process of their own.

Regression: with OpenVINO's runtime loaded in the suite's process (its tests and their compiled
models), a later test's process died with SIGSEGV, in two full runs at the same test
(``test_plan_chat.py::test_a_hub_instruction_lm_plans_by_repo_id``), with no Python traceback;
the modules run together without the rest of the suite did not crash. The engine loads
OpenVINO only under ``VGEN_BACKEND=openvino``; the suite keeps it out of its own process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("openvino_cases.py")


@pytest.mark.timeout(900)
def test_the_openvino_backend_cases_pass_in_a_process_of_their_own():
    # Fails, never skips: the README's test tools include openvino, and .ci/run installs it.
    assert importlib.util.find_spec("openvino") is not None, \
        "the OpenVINO backend's tests need the openvino package: pip install 'openvino>=2025.1'"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                          cwd=CASES.parent.parent, capture_output=True, text=True, timeout=880)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in summary and "skipped" not in summary and "deselected" not in summary, summary


def _ir_folder(root: Path, name: str, size: int, age_s: float, done: bool = True) -> Path:
    import os
    import time

    folder = root / "openvino" / name
    folder.mkdir(parents=True)
    (folder / "denoiser.bin").write_bytes(b"\0" * size)
    stamp = time.time() - age_s
    if done:
        (folder / "done.json").write_text("{}\n")
        os.utime(folder / "done.json", (stamp, stamp))
    os.utime(folder, (stamp, stamp))
    return folder


def test_old_irs_are_pruned_to_the_budget_most_recently_used_first(tmp_path, monkeypatch):
    """Each IR holds all the weights of its module, one per input signature: without pruning,
    sizes and guidance settings tried over time fill the disk (no openvino needed here)."""
    from vgen import openvino_ir

    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path))
    new = _ir_folder(tmp_path, "new", 400, age_s=10)
    mid = _ir_folder(tmp_path, "mid", 400, age_s=100)
    old = _ir_folder(tmp_path, "old", 400, age_s=1000)
    half_done = _ir_folder(tmp_path, "interrupted", 10, age_s=7200, done=False)
    converting = _ir_folder(tmp_path, "converting", 10, age_s=5, done=False)  # another process, now
    just_saved = _ir_folder(tmp_path, "saved", 900, age_s=2000)  # the spare: kept whatever its size
    removed = openvino_ir.prune_irs(budget=1000 + 900, spare=just_saved)
    assert set(removed) == {old, half_done}
    assert all(p.is_dir() for p in (new, mid, converting, just_saved)) and not old.exists()
    assert openvino_ir.prune_irs(budget=450) == [mid, just_saved]  # no spare now: what fits, newest first
