"""The command line, run as users run it: ``python -m vgen ...`` in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vgen(*args, env_extra=None, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    p = subprocess.run([sys.executable, "-m", "vgen", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr[-2000:]}")
    return p


def test_generate_twice_gives_identical_pixels_and_info_shows_the_seed(tiny_models, tmp_path):
    env = {"VGEN_MODEL_ROOTS": str(tiny_models["root"]), "VGEN_DEFAULT_MODEL": str(tiny_models["txt2img"])}
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    vgen("generate", "a red circle", "--seed", 3, "--steps", 2, "--out", a, env_extra=env)
    vgen("generate", "a red circle", "--seed", 3, "--steps", 2, "--num", 2, "--out", b, env_extra=env)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(tmp_path / "b-0.png")))
    assert (tmp_path / "b-1.png").exists()
    info = vgen("info", a).stdout
    assert "Seed: 3" in info and info.startswith("a red circle")
    assert "Seed: 4" in vgen("info", tmp_path / "b-1.png").stdout


def test_unknown_words_are_reported(tiny_models, tmp_path):
    env = {"VGEN_MODEL_ROOTS": str(tiny_models["root"]), "VGEN_DEFAULT_MODEL": str(tiny_models["txt2img"])}
    p = vgen("generate", "a cat on a sofa", "--seed", 1, "--steps", 1, "--out", tmp_path / "c.png", env_extra=env)
    assert "cat, sofa" in p.stderr and "it knows:" in p.stderr and "circle" in p.stderr


def test_prompts_file_writes_numbered_files_in_order(tiny_models, tmp_path):
    env = {"VGEN_MODEL_ROOTS": str(tiny_models["root"]), "VGEN_DEFAULT_MODEL": str(tiny_models["txt2img"])}
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    vgen("generate", "--prompts-file", prompts, "--out-dir", tmp_path / "out", "--seed", 5, "--steps", 1, env_extra=env)
    assert sorted(os.listdir(tmp_path / "out")) == ["0000.png", "0001.png"]
    assert vgen("info", tmp_path / "out" / "0001.png").stdout.startswith("a blue square")


def test_bad_input_exits_2_with_one_line(tiny_models, tmp_path):
    env = {"VGEN_MODEL_ROOTS": str(tiny_models["root"]), "VGEN_DEFAULT_MODEL": str(tiny_models["txt2img"])}
    p = vgen("generate", "x", "--steps", 0, "--out", tmp_path / "x.png", env_extra=env, check=False)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "steps" in p.stderr
    p = vgen("generate", "x", "--model", "/etc", "--out", tmp_path / "x.png", check=False)
    assert p.returncode == 2 and "error:" in p.stderr
    p = vgen("info", tmp_path / "missing.png", check=False)
    assert p.returncode == 2


def test_train_smoke_saves_and_reloads_through_the_engine(tmp_path):
    out = tmp_path / "models" / "shapes-tiny"
    vgen("train", "shapes", "--tiny", "--steps", 2, "--vae-steps", 1, "--out", out,
         "--state-dir", tmp_path / "state")
    assert (out / "model_index.json").exists() and (out / "README.md").exists()
    assert all(f.stat().st_size < 10e6 for f in out.rglob("*"))
    # Regression (latent scale lost on export): the fitted scale must reach vae/config.json,
    # not stay SD's 0.18215, or every exported model decodes saturated blurs.
    state = torch.load(tmp_path / "state" / "state.pt", weights_only=False)
    saved = json.loads((out / "vae" / "config.json").read_text())["scaling_factor"]
    assert saved == pytest.approx(state["scaling_factor"]) and saved != 0.18215
    from diffusers import AutoencoderKL

    from vgen.shapes.model import DECODER_NOISE_STD

    vae = AutoencoderKL.from_pretrained(out, subfolder="vae", dtype=torch.float32)
    with torch.no_grad():
        std = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.std
    assert float(std.max()) == pytest.approx(DECODER_NOISE_STD, rel=0.01)  # pinned at export
    env = {"VGEN_MODEL_ROOTS": str(tmp_path / "models")}
    vgen("generate", "a red circle", "--model", out, "--steps", 2, "--seed", 1, "--out", tmp_path / "g.png", env_extra=env)
    assert Image.open(tmp_path / "g.png").size == (64, 64)
    # resumes from the exported weights alone (no optimizer state), as on a fresh machine
    p = vgen("train", "shapes", "--tiny", "--steps", 3, "--vae-steps", 1, "--out", out,
             "--state-dir", tmp_path / "fresh-state", "--resume", "--reset-optimizer", "--decay-start", 2,
             "--workers", 2, "--batch", 3, "--device", "cpu")  # batches made by 2 worker processes
    assert "resumed from exported weights" in p.stdout and "step 3" in p.stdout
    assert json.loads((out / "training.json").read_text())["config"]["batch"] == 3
