"""Command line of prompt expansion (wired into ``vgen.cli``):

* ``python -m vgen expand PROMPT [--lm REF] [--seed S] [--num N] [--temperature T]
  [--system-prompt TEXT] [--max-new-tokens N]`` prints N expansions, one a line (variant ``i``
  uses seed ``S + i``; the seed and the model go to stderr, so stdout is only the prompts);
* ``python -m vgen generate PROMPT --expand [--lm REF] ...`` expands first (with the image seed)
  and draws the expansion; the PNG records how its prompt was made.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace

from .errors import VgenError


def add_lm_options(p: argparse.ArgumentParser, with_seed: bool = False) -> None:
    p.add_argument("--lm", default=None, help="language model: Hub repo id[@revision] or local folder "
                   "(default: VGEN_DEFAULT_LM or the embedded vgen-shapes-lm)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0-2 (0: greedy; default 0.8)")
    p.add_argument("--system-prompt", default=None,
                   help="instruction models only (default: vgen.expand.DEFAULT_SYSTEM_PROMPT)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    if with_seed:
        p.add_argument("--seed", type=int, default=None, help="variant i uses seed+i; -1 or omitted: draw one")
        p.add_argument("--num", type=int, default=1, help="number of expansions")


def add_expand_parser(sub) -> None:
    x = sub.add_parser("expand", help="expand a prompt with a language model; one expansion a line")
    x.add_argument("prompt")
    add_lm_options(x, with_seed=True)
    x.set_defaults(func=cmd_expand)


def _request(a: argparse.Namespace, prompt: str, seed: int | None, num: int):
    from .expand import DEFAULT_TEMPERATURE, ExpandRequest

    temperature = DEFAULT_TEMPERATURE if a.temperature is None else a.temperature
    return ExpandRequest(prompt=prompt, lm=a.lm, seed=seed, temperature=temperature,
                         max_new_tokens=a.max_new_tokens, num_variants=num,
                         system_prompt=a.system_prompt)


def cmd_expand(a: argparse.Namespace) -> int:
    from .expand import expand

    result = expand(_request(a, a.prompt, a.seed, a.num))
    print(f"{result.lm} ({result.mode}, revision {result.revision[:12]}), seeds "
          f"{result.seeds[0]}..{result.seeds[-1]}", file=sys.stderr)
    for text in result.variants:
        print(text)
    return 0


def expand_first(a: argparse.Namespace, req):
    """``generate --expand``: the request with the expanded prompt and its record. The image
    seed (drawn here when not given) is also the expansion's seed."""
    from .expand import expand

    seed = req.seed
    if seed is None or seed == -1:
        seed = random.SystemRandom().randrange(0, 2**32 - 64)
    try:
        result = expand(_request(a, req.prompt, seed, 1))
    except VgenError as e:
        raise VgenError(f"could not expand the prompt: {e}") from e
    print(f"expanded by {result.lm} (seed {seed}): {result.variants[0]}", file=sys.stderr)
    return replace(req, prompt=result.variants[0], seed=seed, expansion=result.expansion(0))
