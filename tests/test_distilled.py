"""The distilled shapes model (issue #23): the distillation target's algebra, the student's start,
the trainer's runs/ -> checkpoints/ discipline, and the export as a stock diffusers pipeline that
draws in one UNet branch a step. Tiny configs, fixed seeds, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny_models import check_interrupted_run, save_tiny

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    folder = save_tiny(tmp_path_factory.mktemp("teacher") / "vgen-shapes")
    (folder / "training.json").write_text(json.dumps({"step": 7}))
    return folder


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory) -> Path:
    """A tiny student trained one step from the tiny teacher, exported."""
    from vgen.shapes.train_distilled import train_distilled

    cfg = _cfg(tmp_path_factory.mktemp("student"), teacher, steps=1)
    train_distilled(cfg, log=lambda m: None)
    return Path(cfg.out)


def _cfg(tmp: Path, init: Path, **kw):
    from vgen.shapes.train_distilled import DistillConfig

    base = dict(init=str(init), out=str(tmp / "out" / "vgen-shapes-distilled"), state_dir=str(tmp / "state"),
                steps=2, batch=2, log_every=1, save_every=1, device="cpu")
    return DistillConfig(**{**base, **kw})


def test_target_is_the_v_of_one_ddim_step_landing_on_the_teacher():
    """Salimans & Ho's Alg. 2 target: when z'' is one DDIM step of some v from z_t, the target
    is that v, whatever the two alpha_bars (the last step's included, alpha_bar 1)."""
    from vgen.shapes.train_distilled import ddim_step, student_target

    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    a_t = torch.tensor([0.02, 0.5, 0.9]).view(-1, 1, 1, 1)
    a_s = torch.tensor([0.3, 0.8, 1.0]).view(-1, 1, 1, 1)
    assert torch.allclose(student_target(z, ddim_step(z, v, a_t, a_s), a_t, a_s), v, atol=1e-4)


def test_student_starts_as_the_teachers_conditional_branch(teacher):
    from diffusers import UNet2DConditionModel

    from vgen.shapes.train_distilled import GUIDANCE_EMBED_DIM, student_unet

    t_unet = UNet2DConditionModel.from_pretrained(teacher / "unet").eval()
    s_unet = student_unet(t_unet).eval()
    assert s_unet.config.time_cond_proj_dim == GUIDANCE_EMBED_DIM
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([999, 99])
    cond = torch.randn(2, 32, t_unet.config.cross_attention_dim)
    with torch.no_grad():
        ref = t_unet(x, t, cond).sample
        out = s_unet(x, t, cond, timestep_cond=torch.randn(2, GUIDANCE_EMBED_DIM)).sample
    assert torch.allclose(ref, out, atol=1e-5)


def _unet_batches(holder) -> list[int]:
    """The batch of each call of ``holder``'s UNet from now on (a pipeline's ``unet``, a
    trainer's ``teacher_unet``)."""
    unet = getattr(holder, "teacher_unet", None) or holder.unet
    sizes: list[int] = []
    unet.register_forward_pre_hook(lambda m, args, kwargs: sizes.append(args[0].shape[0]), with_kwargs=True)
    return sizes


def test_train_export_and_plain_diffusers_draws_one_branch(teacher, tmp_path):
    from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionPipeline

    from vgen.shapes.train_distilled import train_distilled

    cfg = _cfg(tmp_path, teacher)
    trainer = train_distilled(cfg, log=lambda m: None)
    assert trainer.step == 2
    assert trainer.unet.time_embedding.cond_proj.weight.abs().sum() > 0  # the guidance embedding trains
    out = Path(cfg.out)
    meta = json.loads((out / "training.json").read_text())
    assert meta["step"] == 2 and meta["init_step"] == 7 and meta["student_steps"] == 10
    card = (out / "README.md").read_text()
    assert "num_inference_steps: 10" in card and "guidance_scale: 4.0" in card
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    pipe = DiffusionPipeline.from_pretrained(out)  # no dtype: plain diffusers
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.timestep_spacing == "trailing" and not pipe.scheduler.config.clip_sample
    pipe.set_progress_bar_config(disable=True)
    sizes = _unet_batches(pipe)
    images = pipe("a red circle", num_inference_steps=10, guidance_scale=4.0, height=64, width=64,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(images)).all()
    assert sizes == [1] * 10  # one branch a step: the guidance is the UNet's own input
    # The timesteps it draws at are the grid it was distilled on.
    assert pipe.scheduler.timesteps.tolist() == trainer.grid.tolist()


def test_interrupted_run_leaves_no_checkpoint_and_resumes(teacher, tmp_path, monkeypatch):
    from vgen.shapes import train_distilled as td

    check_interrupted_run(td.DistillTrainer, td.train_distilled,
                          lambda state, out: td.export_from_state(state, out, init=str(teacher), log=lambda m: None),
                          _cfg(tmp_path, teacher, steps=3), monkeypatch)


def test_cli_train_distilled(teacher, tmp_path):
    from vgen.cli import main

    out = tmp_path / "d"
    rc = main(["train", "distilled", "--tiny", "--steps", "1", "--init", str(teacher),
               "--out", str(out), "--state-dir", str(tmp_path / "s"), "--device", "cpu"])
    assert rc == 0 and json.loads((out / "training.json").read_text())["step"] == 1


def test_engine_says_when_a_negative_prompt_had_no_effect(teacher, student, monkeypatch):
    """The distilled model runs no unconditional branch, so a negative prompt changes nothing:
    the result says so (the UI's notice, the CLI's stderr), and says nothing when it was used."""
    from vgen.generate import generate
    from vgen.pipelines import ModelCache
    from vgen.requests import GenerateRequest

    monkeypatch.setenv("VGEN_MODEL_ROOTS", f"{student.parent}:{teacher.parent}")
    cache = ModelCache(max_models=2)
    base = dict(prompt="a red circle", negative_prompt="a blue square", steps=2, seed=0)
    distilled = generate(GenerateRequest(model=str(student), guidance=4.0, **base), cache=cache)
    assert "no unconditional branch" in distilled.extras["negative_note"]
    assert generate(GenerateRequest(model=str(teacher), guidance=4.0, **base), cache=cache).extras["negative_note"] == ""
    low = generate(GenerateRequest(model=str(teacher), guidance=1.0, **base), cache=cache)
    assert "guidance above 1" in low.extras["negative_note"]


def test_eval_update_card_renders_the_students_card(student, monkeypatch, capsys):
    from vgen.cli import main

    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(student.parent))
    assert main(["eval", "shapes", "--model", str(student), "--n", "1", "--steps", "2", "--update-card"]) == 0
    report = json.loads((student / "eval.json").read_text())
    assert report["training_step"] == 1 and report["settings"]["sampler"] == "DDIM"
    card = (student / "README.md").read_text()
    assert "distilled" in card and "| **overall (seen combinations)** |" in card


def test_unet_features_of_the_student_take_its_default_guidance(student, monkeypatch):
    """The Features tab's UNet view runs the UNet alone: a student gets the guidance embedding
    its pipeline would pass (the card's default scale), and the view records it."""
    from PIL import Image

    from vgen.features import unet_features
    from vgen.pipelines import ModelCache

    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(student.parent))
    maps = unet_features(Image.new("RGB", (64, 64), (200, 40, 40)), model=str(student), prompt="a red circle",
                         cache=ModelCache(max_models=1))
    assert maps.extras["guidance"] == 4.0 and maps.layers


def test_the_shipped_student_is_the_default_and_hands_layouts_to_the_grounded_twin(monkeypatch):
    from vgen.catalog import EMBEDDED_DISTILLED_MODEL, EMBEDDED_GROUNDED_MODEL, default_model, layout_model
    from vgen.compare_run import is_shapes_model

    monkeypatch.delenv("VGEN_DEFAULT_MODEL", raising=False)
    assert default_model() == EMBEDDED_DISTILLED_MODEL
    for ref in ("", EMBEDDED_DISTILLED_MODEL, "checkpoints/vgen-shapes-distilled", "vgen-shapes"):
        assert layout_model(ref) == EMBEDDED_GROUNDED_MODEL, ref
    assert is_shapes_model(EMBEDDED_DISTILLED_MODEL)  # Compare scores its cells


@pytest.mark.parametrize("round_", [1, 2])
def test_teacher_runs_guidance_its_own_way_each_round(teacher, student, tmp_path, round_):
    """Round 1: the teacher runs classifier-free guidance (both branches, 2B a call); round 2
    (the teacher a student, ``--init`` the distilled model, ``--student-steps 5``): its own
    guidance embedding, B a call, and the new student draws in 5 steps of one branch."""
    from diffusers import DiffusionPipeline

    from vgen.shapes.train_distilled import DistillTrainer, train_distilled

    init, steps = (teacher, 10) if round_ == 1 else (student, 5)
    cfg = _cfg(tmp_path, init, student_steps=steps, steps=1)
    trainer = DistillTrainer(cfg, log=lambda m: None)
    trainer.start_from_init()
    sizes = _unet_batches(trainer)  # the teacher's calls
    trainer.step_once(next(trainer.batches()))
    assert sizes == ([4, 4] if round_ == 1 else [2, 2])
    assert trainer.grid.tolist() == ([999, 899, 799, 699, 599, 499, 399, 299, 199, 99] if round_ == 1
                                     else [999, 799, 599, 399, 199])
    if round_ == 2:
        out = train_distilled(cfg, log=lambda m: None).cfg.out
        meta = json.loads((Path(out) / "training.json").read_text())
        assert meta["teacher_branches"] == 1 and meta["student_steps"] == 5
        assert "itself a distilled student" in (Path(out) / "README.md").read_text()
        pipe = DiffusionPipeline.from_pretrained(out)
        pipe.set_progress_bar_config(disable=True)
        calls = _unet_batches(pipe)
        pipe("a red circle", num_inference_steps=5, guidance_scale=4.0, height=64, width=64)
        assert calls == [1] * 5
