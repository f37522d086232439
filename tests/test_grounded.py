"""The grounded shapes model (issue #22): GLIGEN parts, the trainer's runs/ -> checkpoints/
discipline, the export through diffusers' own StableDiffusionGLIGENPipeline, the objective check,
and the tiny GLIGEN architecture. Tiny configs, fixed seeds, a few steps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tiny_models import check_interrupted_run
from vgen.shapes import world

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> Path:
    """A tiny text-to-image shapes model saved as the trainers' init folder."""
    from diffusers import StableDiffusionPipeline

    from vgen.shapes.model import ModelConfig, build_all, build_sample_scheduler

    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    tok, text, vae, unet, _ = build_all(cfg)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=build_sample_scheduler(cfg), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("init") / "vgen-shapes"
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "training.json").write_text(json.dumps({"step": 7}))
    return folder


def _cfg(tmp: Path, init: Path, **kw):
    from vgen.shapes.train_grounded import GroundedTrainConfig

    base = dict(init=str(init), out=str(tmp / "out" / "vgen-shapes-grounded"),
                state_dir=str(tmp / "state"), steps=2, batch=2, log_every=1, save_every=1,
                device="cpu")
    base.update(kw)
    return GroundedTrainConfig(**base)


def test_move_eos_last_keeps_prompts_and_pools_at_the_end(tiny_init):
    from diffusers import StableDiffusionPipeline

    from vgen.shapes import gligen

    pipe = StableDiffusionPipeline.from_pretrained(tiny_init)
    tok, text = pipe.tokenizer, pipe.text_encoder
    prompt = ["a yellow circle to the left of a blue square"]
    before = text(tok(prompt, return_tensors="pt").input_ids).last_hidden_state
    tok2, text2 = gligen.move_eos_last(tok, text)
    ids = tok2(prompt, return_tensors="pt").input_ids
    assert ids[0, -1].item() == len(tok2) - 1 == text2.config.eos_token_id
    out = text2(ids)
    assert torch.equal(out.last_hidden_state, before)
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, -1])  # the end token
    assert tok2.decode(ids[0], skip_special_tokens=True) == prompt[0]


def test_gated_unet_starts_as_the_text_to_image_unet(tiny_init):
    from diffusers import UNet2DConditionModel

    from vgen.layout import Layout, LayoutObject
    from vgen.shapes import gligen

    unet = UNet2DConditionModel.from_pretrained(tiny_init / "unet")
    gated = gligen.gated_unet(unet)
    assert gated.config.attention_type == "gated" and hasattr(gated, "position_net")
    gates = [p for n, p in gated.named_parameters() if n.endswith(("alpha_attn", "alpha_dense"))]
    assert gates and all(float(g) == 0.0 for g in gates)
    torch.manual_seed(0)
    z, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 900])
    cond = torch.randn(2, 32, unet.config.cross_attention_dim)
    lay = Layout((LayoutObject("a red circle", (0.1, 0.1, 0.4, 0.4)),))
    emb = {"a red circle": torch.randn(unet.config.cross_attention_dim)}
    kw = gligen.gligen_kwargs([lay, Layout(())], emb, unet.config.cross_attention_dim, "cpu", torch.float32)
    assert kw["boxes"].shape == (2, 30, 4) and kw["masks"].sum() == 1
    with torch.no_grad():
        a = unet(z, t, cond).sample
        b = gated(z, t, cond, cross_attention_kwargs={"gligen": kw}).sample
    assert torch.allclose(a, b, atol=1e-6)


def test_scene_layouts_are_exact():
    from vgen.shapes import captions, gligen

    rng = random.Random(3)
    for _ in range(20):
        scene = world.sample_scene(rng)
        lay = gligen.scene_layout(scene, rng)
        assert len(lay) == len(scene.objects)
        for o, obj in zip(lay.objects, scene.objects):
            assert o.box == tuple(v / 64 for v in obj.box)
            g = captions.parse(o.phrase).groups[0]
            assert (g.count, g.color, g.shape) == (1, obj.color, obj.shape)
    o = world.Obj("orange", "circle", "large", 20, 20)
    assert gligen.canonical_phrase(o) == "an orange circle"
    assert gligen.canonical_phrase(o, with_size=True) == "a large orange circle"


def test_box_hits_on_rendered_scenes_are_perfect():
    from vgen.shapes.analyzer import detect
    from vgen.shapes.evaluate_grounded import box_hits, eval_scenes

    for scene, caption in eval_scenes(8, seed=1):
        hits = box_hits(scene, detect(world.render(scene)))
        assert min(hits) >= 0.5, (caption, hits)
    scene = eval_scenes(1, seed=2)[0][0]
    assert box_hits(scene, []) == [0.0] * len(scene.objects)


def test_train_export_and_diffusers_gligen_pipeline(tiny_init, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionGLIGENPipeline

    from vgen.shapes.train_grounded import train_grounded

    cfg = _cfg(tmp_path, tiny_init)
    trainer = train_grounded(cfg, log=lambda m: None)
    assert trainer.step == 2
    # Only the new layers trained: the base UNet weights equal the init's.
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_init / "unet").state_dict()
    for k, v in trainer.unet.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k
    out = Path(cfg.out)
    meta = json.loads((out / "training.json").read_text())
    assert meta["step"] == 2 and meta["init_step"] == 7
    card = (out / "README.md").read_text()
    assert "gligen_scheduled_sampling_beta: 0.3" in card and "inference:" in card
    assert all(f.stat().st_size < 10e6 for f in out.rglob("*") if f.is_file())
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    pipe = DiffusionPipeline.from_pretrained(out, dtype=torch.float32)
    assert isinstance(pipe, StableDiffusionGLIGENPipeline)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red circle and a blue square", num_inference_steps=2, guidance_scale=2.0,
                  gligen_phrases=["a red circle", "a blue square"],
                  gligen_boxes=[[0.1, 0.4, 0.4, 0.7], [0.6, 0.4, 0.9, 0.7]],
                  gligen_scheduled_sampling_beta=0.5, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(images)).all()


def test_interrupted_run_leaves_no_checkpoint_and_resumes(tiny_init, tmp_path, monkeypatch):
    from vgen.shapes import train_grounded as tg

    check_interrupted_run(tg.GroundedTrainer, tg.train_grounded,
                          lambda state, out: tg.export_from_state(state, out, log=lambda m: None),
                          _cfg(tmp_path, tiny_init, steps=3), monkeypatch)


def test_cli_train_grounded(tiny_init, tmp_path):
    from vgen.cli import main

    out = tmp_path / "g"
    rc = main(["train", "grounded", "--tiny", "--steps", "1", "--init", str(tiny_init),
               "--out", str(out), "--state-dir", str(tmp_path / "s"), "--device", "cpu"])
    assert rc == 0 and json.loads((out / "training.json").read_text())["step"] == 1


def test_eval_grounded_runs(tiny_init, tmp_path):
    from vgen.shapes.evaluate_grounded import evaluate, format_report
    from vgen.shapes.train_grounded import train_grounded

    cfg = _cfg(tmp_path, tiny_init, steps=1)
    train_grounded(cfg, log=lambda m: None)
    r = evaluate(model=cfg.out, n=2, betas=(0.3, 1.0), steps=2, plain=str(tiny_init),
                 log=lambda m: None)
    assert set(r["by_beta"]) == {"0.3", "1"} and r["chosen_beta"] in (0.3, 1.0)
    assert 0.0 <= r["box_hit_rate"] <= 1.0 and "plain" in r
    assert "chosen beta" in format_report(r)


def test_tiny_gligen_architecture():
    from vgen.archs import ARCHS, HUB_REPOS, build_arch

    assert ARCHS["gligen"][0] == "StableDiffusionGLIGENPipeline"
    assert HUB_REPOS["gligen"] == "masterful/gligen-1-4-generation-text-box"
    pipe = build_arch("gligen", tiny=True)
    assert pipe.unet.config.attention_type == "gated" and hasattr(pipe.unet, "position_net")
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", num_inference_steps=2, gligen_phrases=["a cat"],
               gligen_boxes=[[0.2, 0.2, 0.6, 0.6]], height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3)


def test_box_attention_targets_pick_the_smallest_box_holding_each_token():
    import torch

    from vgen.shapes.box_attention import box_attention_loss, box_targets

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]])
    masks = torch.tensor([[1.0, 1.0, 0.0]])  # the third object is padding
    t = box_targets(boxes, masks, side=2).tolist()[0]  # tokens: TL, TR, BL, BR
    assert t == [0, 1, 1, 1]
    # Logits that already route every token to its object give a lower loss than uniform ones.
    good = torch.full((1, 2, 4, 3), -5.0)
    for v, i in enumerate(t):
        good[0, :, v, i] = 5.0
    assert box_attention_loss([good], boxes, masks) < box_attention_loss([torch.zeros(1, 2, 4, 3)], boxes, masks)


def test_a_run_continues_from_an_exported_grounded_model(tmp_path):
    """On a machine without the last run's state (runs/ is never committed), ``--init`` the
    shipped grounded model: its GLIGEN layers train on and the steps count on from its."""
    from vgen.shapes.train_grounded import GroundedTrainConfig, train_grounded

    first = GroundedTrainConfig(out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa"), steps=2, batch=2,
                                save_every=1, log_every=1)
    train_grounded(first, log=lambda m: None)
    more = GroundedTrainConfig(init=str(tmp_path / "a"), out=str(tmp_path / "b"),
                               state_dir=str(tmp_path / "sb"), steps=3, batch=2, save_every=1, log_every=1)
    t = train_grounded(more, log=lambda m: None)
    meta = json.loads((tmp_path / "b" / "training.json").read_text())
    assert t.step == 3 and meta["step"] == 3 and meta["continued_from_step"] == 2
    assert meta["init_step"] == json.loads((tmp_path / "a" / "training.json").read_text())["init_step"]
