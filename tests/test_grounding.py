"""Token grounding (TokenCompose's token loss) used to train the shapes model."""

import random

import numpy as np
import torch

from vgen.shapes import captions, grounding, world
from vgen.shapes.model import ModelConfig, build_all


def test_coverage_is_what_render_draws():
    rng = random.Random(1)
    bg = np.array(world.BACKGROUND, float)
    for _ in range(50):
        scene = world.sample_scene(rng)
        drawn = np.abs(world.render_array(scene).astype(float) - bg).sum(-1) > 0
        covered = sum(world.coverage(o) for o in scene.objects) > 0
        assert np.array_equal(drawn, covered)


def test_each_color_and_shape_word_names_its_objects():
    rng = random.Random(2)
    shapes = {**{s: s for s in world.SHAPES}, **{p: s for s, p in captions.PLURALS.items()}}
    for _ in range(300):
        scene = world.sample_scene(rng)
        text = captions.describe(rng, scene)
        words = captions.tokenize(text)
        found = grounding.groundings(text, scene)
        named = [w for w in words if w in world.COLORS or w in shapes]
        assert [words[i] for i, _ in found] == named
        for i, objs in found:
            assert objs, text
            for j in objs:
                o = scene.objects[j]
                assert words[i] in (o.color, o.shape + "s", o.shape)
        # Every object is named by some color word and some shape word.
        for kind in (world.COLORS, shapes):
            covered = {j for i, objs in found if words[i] in kind for j in objs}
            assert covered == set(range(len(scene.objects))), text


def test_word_positions_match_the_tokenizer():
    tok = build_all(ModelConfig.tiny())[0]
    text = "two red circles, a blue square and a big green triangle"
    ids = tok(text).input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    for i, w in enumerate(captions.tokenize(text)):
        assert tokens[i + 1] == w  # word i sits after the start token


def test_token_loss_is_zero_inside_and_one_outside():
    masks = torch.zeros(1, 4, 64, 64)
    masks[0, 2, :32, :32] = 1.0  # token 2 names the top-left quarter
    weight = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    inside = torch.zeros(1, 16, 16, 4)
    inside[0, :8, :8, 2] = 1.0
    outside = torch.zeros(1, 16, 16, 4)
    outside[0, 8:, 8:, 2] = 1.0
    probs = [inside.flatten(1, 2)]  # (B, N=256, T)
    assert grounding.token_loss(probs, masks, weight, (16, 16)).item() == 0.0
    assert grounding.token_loss([outside.flatten(1, 2)], masks, weight, (16, 16)).item() == 1.0


def test_recording_restores_the_processors_and_keeps_gradients():
    torch.manual_seed(0)
    tok, text, vae, unet, _ = build_all(ModelConfig.tiny())
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    ids = tok(["a red circle"], padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    cond = text(ids).last_hidden_state
    z = torch.randn(1, unet.config.in_channels, 16, 16)
    with grounding.record_cross_attention(unet) as probs:
        unet(z, torch.tensor([500]), cond)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    n_cross = sum(k.endswith("attn2.processor") for k in before)
    assert len(probs) == n_cross and all(p.shape[0] == 1 and p.shape[2] == ids.shape[1] for p in probs)
    masks, weight = grounding.target_masks(
        ["a red circle"], [world.Scene((world.Obj("red", "circle", "large", 20, 20),))], ids.shape[1])
    assert weight[0].tolist()[:4] == [0, 0, 1, 1]  # "red" and "circle", after <bos> "a"
    loss = grounding.token_loss(probs, masks, weight, (16, 16))
    loss.backward()
    assert 0 < loss.item() <= 1 and unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.grad is not None


def test_masks_pooled_to_the_latent_grid_give_the_same_token_loss():
    """The trainer's batches carry masks pooled to 16x16 in fp16 (train.diffusion_batch); the
    token loss pools them to each layer's grid anyway, so the loss is the one of full masks."""
    from vgen.shapes.train import diffusion_batch, sample_batch

    x, texts, (pooled, weight) = diffusion_batch(random.Random(2), 4, 0.0, 0.5, 0.8, 32, True, 16)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 64, 64) and pooled.shape == (4, 32, 16, 16)
    _, _, scenes = sample_batch(random.Random(2), 4, 0.0, with_scenes=True, repeat_prob=0.5,
                                phrase_prob=0.8)  # the same draws
    full, weight_full = grounding.target_masks(texts, scenes, 32)
    assert torch.equal(weight, weight_full)
    torch.manual_seed(0)
    probs = [torch.rand(4, n, 32).softmax(-1) for n in (256, 64)]  # two layers: 16x16 and 8x8
    a = grounding.token_loss(probs, full, weight, (16, 16))
    b = grounding.token_loss(probs, pooled.float(), weight, (16, 16))
    assert abs(a.item() - b.item()) < 1e-3 and a.item() > 0
