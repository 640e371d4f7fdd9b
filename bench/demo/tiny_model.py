"""Tiny vision-language models saved as real Hugging Face model directories, built offline.

Random weights (seeded), a byte-level BPE tokenizer trained on the demo's own prompts, and the
family's stock processor, so that the silo agent loads them exactly as it loads a real model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from bench.demo.tiny_families import FAMILIES

_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<end_of_utterance>"]


def train_tokenizer(
    corpus: Iterable[str], *, tokens: dict[str, str], vocab_size: int = 600
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with the base special tokens and `tokens` (attribute -> special token)."""
    extra = list(dict.fromkeys(t for t in tokens.values() if t not in _SPECIAL))
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL + extra,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=tokens,
    )
    fast.add_special_tokens({"additional_special_tokens": _SPECIAL[4:] + extra})
    return fast


def build_tiny_model(
    out: Path,
    *,
    family: str = "idefics3",
    corpus: Iterable[str],
    seed: int = 0,
    num_layers: int = 2,
) -> Path:
    """Write a tiny model of `family` and its processor to `out` as a Hugging Face model dir."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {sorted(FAMILIES)}")
    spec = FAMILIES[family]
    tokenizer = train_tokenizer(corpus, tokens=spec.tokens)
    torch.manual_seed(seed)
    model, processor = spec.build(tokenizer, num_layers)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
