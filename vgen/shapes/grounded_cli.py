"""``python -m vgen train grounded|planner`` and ``python -m vgen eval grounded|planner``
(issue #22): the command line's hook into the grounded generator and the layout planner, kept
here so ``vgen/cli.py`` only dispatches."""

from __future__ import annotations

from dataclasses import replace


def _log(message: str) -> None:
    print(message, flush=True)


def train(a, overrides: dict) -> int:
    if a.what == "grounded":
        from .train_grounded import GroundedTrainConfig, train_grounded

        cfg = GroundedTrainConfig()
        cfg = replace(cfg, init=a.init or cfg.init, out=a.out or cfg.out,
                      steps=a.steps or cfg.steps, state_dir=a.state_dir or cfg.state_dir,
                      decay_start=a.decay_start)
        if a.tiny:
            cfg = replace(cfg, batch=2, save_every=max(1, cfg.steps // 2), log_every=1)
        cfg = replace(cfg, **overrides)
        train_grounded(cfg, resume=a.resume, log=_log)
        return 0
    from .train_planner import PlannerTrainConfig, train_planner

    cfg = PlannerTrainConfig()
    cfg = replace(cfg, out=a.out or cfg.out, steps=a.steps or cfg.steps,
                  state_dir=a.state_dir or cfg.state_dir)
    if a.tiny:
        cfg = replace(cfg, n_embd=32, n_layer=1, n_head=2, batch=4, log_every=1,
                      save_every=max(1, cfg.steps // 2))
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if k in ("batch", "lr", "minutes")})
    train_planner(cfg, resume=a.resume, log=_log)
    return 0


def evaluate(a) -> int:
    if a.what == "grounded":
        from .evaluate_grounded import main

        return main(a)
    from .evaluate_planner import main

    return main(a)
