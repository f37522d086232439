"""The training objective's loss weights and learning-rate schedule, and resuming with a fresh
optimizer (what a change of loss weighting needs)."""

from __future__ import annotations

import math

import pytest
import torch

from vgen.shapes.model import ModelConfig
from vgen.shapes.train import TrainConfig, Trainer, learning_rate, snr_loss_weight


def test_snr_floor_zero_is_min_snr_and_floor_one_keeps_high_noise_steps():
    snr = torch.tensor([0.01, 0.1, 1.0, 5.0, 50.0])
    abar = snr / (1 + snr)
    min_snr = snr_loss_weight(abar, "v_prediction", gamma=5.0)
    assert torch.allclose(min_snr, torch.clamp(snr, max=5.0) / (snr + 1))
    truncated = snr_loss_weight(abar, "v_prediction", gamma=5.0, floor=1.0)
    # high noise: plain v-loss weight (x0 weight 1) instead of ~snr
    assert truncated[0] == pytest.approx(1 / 1.01) and min_snr[0] == pytest.approx(0.01 / 1.01)
    assert torch.equal(truncated[2:], min_snr[2:])  # unchanged from snr 1 on
    eps = snr_loss_weight(abar, "epsilon", gamma=5.0, floor=1.0)
    assert torch.allclose(eps, torch.clamp(snr, 1.0, 5.0) / snr)


def test_learning_rate_warms_up_from_a_fresh_optimizer_and_decays_to_the_floor():
    assert learning_rate(1.0, 0, warmup=10) == pytest.approx(0.1)
    assert learning_rate(1.0, 50, warmup=10) == 1.0
    # a fresh optimizer at step 100 warms up again
    assert learning_rate(1.0, 100, warmup=10, warmup_from=100) == pytest.approx(0.1)
    kw = dict(warmup=10, decay_start=200, total=300, min_ratio=0.1)
    assert learning_rate(1.0, 199, **kw) == 1.0
    assert learning_rate(1.0, 250, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(1.0, 300, **kw) == pytest.approx(0.1)
    assert learning_rate(1.0, 400, **kw) == pytest.approx(0.1)  # past the end: stays at the floor


def test_resume_with_reset_optimizer_keeps_weights_and_restarts_warmup(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "out"), state_dir=str(tmp_path / "state"), steps=2,
                      vae_steps=1, batch=2, vae_batch=2, save_every=2, log_every=1,
                      model=ModelConfig.tiny())
    first = Trainer(cfg, log=lambda m: None)
    first.run()
    assert first.step == 2 and first.opt.state  # Adam moments exist

    kept = Trainer(cfg, log=lambda m: None)
    assert kept.resume()
    assert kept.warmup_from == 0 and kept.opt.state

    reset = Trainer(cfg, log=lambda m: None)
    assert reset.resume(reset_optimizer=True)
    assert reset.step == 2 and reset.warmup_from == 2 and not reset.opt.state
    for a, b in zip(first.unet.parameters(), reset.unet.parameters()):
        assert torch.equal(a, b)
    reset.cfg.steps = 3
    reset.run()  # trains on with the fresh optimizer; the restart point is saved with the state
    assert torch.load(tmp_path / "state" / "state.pt", weights_only=False)["warmup_from"] == 2


def test_the_data_mix_follows_its_knobs():
    """sample_batch's repeat_prob / phrase_prob (TrainConfig's data mix) change how often a
    caption is a pure count or states a place or relation, and nothing else about it."""
    import random

    from vgen.shapes import captions
    from vgen.shapes.train import sample_batch

    def shares(**kw):
        _, texts, scenes = sample_batch(random.Random(0), 2000, with_scenes=True, **kw)
        pure = sum(len(s.objects) >= 2 and len({(o.color, o.shape) for o in s.objects}) == 1
                   for s in scenes)
        placed = sum(any(p in t for p in (*captions.RELATIONS, *captions.PLACES)) for t in texts)
        return pure / 2000, placed / 2000

    low, high = shares(repeat_prob=0.3, phrase_prob=0.5), shares(repeat_prob=0.5, phrase_prob=0.8)
    assert high[0] > low[0] * 1.5 and high[1] > low[1] * 1.3
