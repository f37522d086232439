"""The training objective's loss weights and learning-rate schedule, and resuming with a fresh
optimizer (what a change of loss weighting needs)."""

from __future__ import annotations

import math
import random

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


def test_batch_stream_in_process_continues_the_rng_and_workers_draw_their_own_streams():
    from itertools import islice

    from vgen.shapes.train import batch_stream

    def make(rng):
        return rng.random()

    rng, same = random.Random(5), random.Random(5)
    # In this process: exactly the trainer's rng stream, so a resume draws the same batches.
    assert list(islice(batch_stream(make, rng, 0, "s"), 3)) == [same.random() for _ in range(3)]
    # Two worker processes, each on its own seeded stream: batches from both, none repeated,
    # and the trainer's rng untouched.
    state = rng.getstate()
    drawn = list(islice(batch_stream(make, rng, 2, "s"), 8))
    assert len(set(drawn)) == 8 and rng.getstate() == state
    streams = [random.Random(f"s:{i}") for i in range(2)]
    firsts = {streams[0].random(), streams[1].random()}
    assert firsts <= set(drawn)


def test_time_budget_sets_the_last_step_from_the_measured_pace(monkeypatch):
    from types import SimpleNamespace

    from vgen.shapes import train

    now = [1000.0]
    monkeypatch.setattr(train.time, "time", lambda: now[0])
    cfg, logs = SimpleNamespace(steps=50), []
    budget = train.TimeBudget(1.0, step=500, cfg=cfg, skip=2, probe=4, reserve_s=10.0)
    assert cfg.steps > 10**8  # the user's --steps no longer bounds the run
    for step in range(501, 507):  # 0.5 s a step; the first two (warm-up) are not timed
        now[0] += 0.5
        budget.after_step(step, logs.append)
    # 3 s spent; 60 - 3 - 10 (reserve) = 47 s left at 0.5 s a step: 94 more steps
    assert cfg.steps == 506 + 94 and "ends at step 600" in logs[-1]
    assert not budget.expired()
    # Regression (session 9: fitted once, the run ended 461 steps before its cosine's end): the
    # pace is fitted again every `refit` steps. Here the steps slow to 1 s after the probe.
    slow_cfg = SimpleNamespace(steps=50)
    slow = train.TimeBudget(1.0, step=500, cfg=slow_cfg, skip=2, probe=4, reserve_s=10.0, refit=4)
    for step in range(501, 511):  # 0.5 s a step up to 506, then 1 s
        now[0] += 0.5 if step <= 506 else 1.0
        slow.after_step(step, logs.append)
    # started at 1003: the deadline is 1063. At step 506: 0.5 s/step and 47 s left, step 600; at
    # step 510: 8 timed steps in 6 s (0.75 s/step), 1063 - 10 - 1010 = 43 s left: 57 more
    assert "ends at step 600" in logs[-2]
    assert slow_cfg.steps == 510 + 57 and "ends at step 567" in logs[-1]
    now[0] = 1060.0
    assert budget.expired()
    off = train.TimeBudget(None, step=0, cfg=cfg)  # no budget: nothing changes
    off.after_step(1, logs.append)
    assert cfg.steps == 600 and not off.expired()
