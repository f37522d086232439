"""A word-level tokenizer over the shapes world's vocabulary, saved as standard tokenizer files
(``tokenizer.json``) so ``AutoTokenizer``/``PreTrainedTokenizerFast`` load it like any Hub one.

One token per word keeps attention maps word-aligned (one map per word, see the Features tab).
Words outside the vocabulary become ``<unk>``; ``unknown_words`` reports them to the user.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from .captions import tokenize, vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
MAX_LENGTH = 32


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK] + vocabulary())}
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=max_length,
    )


def unknown_words(text: str, known: set[str] | None = None) -> list[str]:
    """Words of ``text`` the shapes vocabulary lacks, in order, without repeats."""
    known = set(vocabulary()) if known is None else known
    out: list[str] = []
    for w in tokenize(text) + [w for w in text.lower().split() if not w.strip(",").isalpha()]:
        w = w.strip(",")
        if w and w not in known and w not in out:
            out.append(w)
    return out
