"""Tiny vision-language models saved as real Hugging Face model directories, built offline.

Random weights (seeded), a byte-level BPE tokenizer trained on the demo's own prompts, and the
family's stock processor, so that the silo agent loads them exactly as it loads a real model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

FAMILIES = ("idefics3", "llava")
IMAGE_SIZE = 32
PATCH_SIZE = 8

_SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
_EXTRA = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]

# A minimal chat template: each turn as <|role|>content<end_of_utterance>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], *, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL + _EXTRA,
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
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.add_special_tokens({"additional_special_tokens": _EXTRA})
    return fast


def _text_config(vocab_size: int, num_layers: int) -> dict[str, object]:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "pad_token_id": 0,
        "max_position_embeddings": 1024,
    }


def _vision_config() -> dict[str, object]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
    }


def _build(
    family: str, tokenizer: PreTrainedTokenizerFast, num_layers: int
) -> tuple[PreTrainedModel, ProcessorMixin]:
    vocab = len(tokenizer)
    image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))  # type: ignore[arg-type]
    if family == "idefics3":
        config = Idefics3Config(
            text_config=_text_config(vocab, num_layers),
            vision_config=_vision_config(),
            scale_factor=2,
            image_token_id=image_token_id,
        )
        image_processor = Idefics3ImageProcessorPil(
            size={"longest_edge": IMAGE_SIZE},
            max_image_size={"longest_edge": IMAGE_SIZE},
            do_image_splitting=False,
        )
        processor = Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=4,
            chat_template=CHAT_TEMPLATE,
        )
        return Idefics3ForConditionalGeneration(config), processor
    if family == "llava":
        vision = {"model_type": "clip_vision_model", "projection_dim": 32, **_vision_config()}
        llava_config = LlavaConfig(
            text_config=_text_config(vocab, num_layers),
            vision_config=vision,
            image_token_index=image_token_id,
            vision_feature_layer=-1,
        )
        clip_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        )
        llava_processor = LlavaProcessor(
            image_processor=clip_processor,
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
        )
        return LlavaForConditionalGeneration(llava_config), llava_processor
    raise ValueError(f"unknown tiny model family {family!r}; choose one of {FAMILIES}")


def build_tiny_model(
    out: Path,
    *,
    family: str = "idefics3",
    corpus: Iterable[str],
    seed: int = 0,
    num_layers: int = 2,
) -> Path:
    """Write a tiny model and its processor to `out` as a Hugging Face model directory."""
    tokenizer = train_tokenizer(corpus)
    torch.manual_seed(seed)
    model, processor = _build(family, tokenizer, num_layers)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
