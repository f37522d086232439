"""Which words of a prompt a model cannot read.

The embedded shapes model knows ~40 words; a newcomer types "a cat on a sofa". Any tokenizer
with an unknown token (word-level ones like the shapes model's) tells us which words fall
outside its vocabulary, so the CLI and the UI can say so and list what it does know.
"""

from __future__ import annotations

import re

SMALL_VOCAB = 1000  # a vocabulary this small is worth listing to the user


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words of ``prompt`` that ``tokenizer`` maps to its unknown token, in order, once each."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or unk is None:
        return []
    out: list[str] = []
    for word in re.findall(r"[^\s,.;:!?]+", prompt):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if unk in ids and word.lower() not in out:
            out.append(word.lower())
    return out


def known_words(tokenizer) -> list[str]:
    """The whole vocabulary when it is small enough to show (else empty)."""
    if tokenizer is None or len(tokenizer) > SMALL_VOCAB:
        return []
    special = set(getattr(tokenizer, "all_special_tokens", []))
    return sorted(w for w in tokenizer.get_vocab() if w not in special and w.isalpha())
