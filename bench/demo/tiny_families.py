"""Tiny random-weight versions of each vision-language family, built from configs offline.

Each family gets its stock model class, its own processor class (the PIL image processor and
no video processor, which is what a CPU-only silo can load) and a tokenizer that carries the
family's special tokens, so that the silo agent exercises the family's real code paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from bench.demo import tiny_configs as configs
from bench.demo.tiny_configs import IMAGE_SIZE, PATCH_SIZE
from shared.processors import image_only_processor


def chat_template(image: str) -> str:
    """Each turn as <|role|>content<end_of_utterance>; an image item becomes `image`."""
    return (
        "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + image + "{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )


@dataclass(frozen=True)
class TinyFamily:
    """How to build one family: its special tokens, configs, model and processor classes."""

    name: str  # the family's model_type
    model_class: str  # transformers class of the full model
    processor_class: str  # transformers class of the processor (video processor dropped)
    image_processor: Callable[[], Any]  # the PIL image processor, sized for IMAGE_SIZE
    config: Callable[[dict[str, int], int], Any]  # (token ids, layers) -> model config
    tokens: dict[str, str]  # tokenizer attribute (e.g. image_token) -> special token
    image_text: str | None  # what stands for an image in the chat template; None: no template
    processor_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(
        self, tokenizer: PreTrainedTokenizerFast, num_layers: int
    ) -> tuple[PreTrainedModel, ProcessorMixin]:
        ids = {k: int(tokenizer.convert_tokens_to_ids(v)) for k, v in self.tokens.items()}  # type: ignore[arg-type]
        ids |= {
            "vocab_size": len(tokenizer),
            "pad": int(tokenizer.pad_token_id),
            "bos": int(tokenizer.bos_token_id),
            "eos": int(tokenizer.eos_token_id),
        }
        model: PreTrainedModel = getattr(transformers, self.model_class)(
            self.config(ids, num_layers)
        )
        template = chat_template(self.image_text) if self.image_text is not None else None
        processor = image_only_processor(
            getattr(transformers, self.processor_class),
            image_processor=self.image_processor(),
            tokenizer=tokenizer,
            chat_template=template,
            **self.processor_kwargs,
        )
        return model, processor


def _pil(name: str, **kwargs: Any) -> Callable[[], Any]:
    return lambda: getattr(transformers, name)(**kwargs)


_SQUARE = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
_QWEN_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_QWEN_PIL = _pil(
    "Qwen2VLImageProcessorPil",
    min_pixels=IMAGE_SIZE**2,
    max_pixels=IMAGE_SIZE**2,
    patch_size=PATCH_SIZE,
    merge_size=2,
    temporal_patch_size=2,
)


def _qwen(name: str, model: str, processor: str, config: Callable[..., Any]) -> TinyFamily:
    return TinyFamily(
        name=name,
        model_class=model,
        processor_class=processor,
        image_processor=_QWEN_PIL,
        config=config,
        tokens=_QWEN_TOKENS,
        image_text=_QWEN_IMAGE,
    )


_IDEFICS_TOKENS = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
_IDEFICS_PIL = {
    "size": {"longest_edge": IMAGE_SIZE},
    "max_image_size": {"longest_edge": IMAGE_SIZE},
    "do_image_splitting": False,
}


_LLAVA_PROCESSOR = {
    "patch_size": PATCH_SIZE,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
}


def _family(
    name: str,
    classes: str,
    pil: Callable[[], Any],
    config: Callable[..., Any],
    tokens: dict[str, str],
    image_text: str | None,
    **processor_kwargs: Any,
) -> TinyFamily:
    model_class, processor_class = classes.split()
    return TinyFamily(
        name=name,
        model_class=model_class,
        processor_class=processor_class,
        image_processor=pil,
        config=config,
        tokens=tokens,
        image_text=image_text,
        processor_kwargs=processor_kwargs,
    )


_GEMMA_TOKENS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
}
_MLLAMA_TOKENS = {"image_token": "<|image|>", "python_token": "<|python_tag|>"}
_INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
_LLAVA_PIL = _pil("CLIPImageProcessorPil", size={"shortest_edge": IMAGE_SIZE}, crop_size=_SQUARE)
_NEXT_PIL = _pil(
    "LlavaNextImageProcessorPil",
    size={"shortest_edge": IMAGE_SIZE},
    crop_size=_SQUARE,
    image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
)
_ONEVISION_PIL = _pil(
    "LlavaOnevisionImageProcessorPil", size=_SQUARE, image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]]
)
_SIGLIP_PIL = _pil("SiglipImageProcessorPil", size=_SQUARE, image_seq_length=16)

FAMILIES: dict[str, TinyFamily] = {
    f.name: f
    for f in (
        _qwen("qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", configs.qwen2_vl),
        _qwen(
            "qwen2_5_vl",
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen2_5_VLProcessor",
            configs.qwen2_5_vl,
        ),
        _qwen("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", configs.qwen3_vl),
        _family(
            "idefics3",
            "Idefics3ForConditionalGeneration Idefics3Processor",
            _pil("Idefics3ImageProcessorPil", **_IDEFICS_PIL),
            configs.idefics3,
            _IDEFICS_TOKENS,
            "<image>",
            image_seq_len=4,
        ),
        _family(
            "smolvlm",
            "SmolVLMForConditionalGeneration SmolVLMProcessor",
            _pil("SmolVLMImageProcessorPil", **_IDEFICS_PIL),
            configs.smolvlm,
            {**_IDEFICS_TOKENS, "video_token": "<video>"},
            "<image>",
            image_seq_len=4,
        ),
        _family(
            "llava",
            "LlavaForConditionalGeneration LlavaProcessor",
            _LLAVA_PIL,
            configs.llava,
            {"image_token": "<image>"},
            "<image>",
            **_LLAVA_PROCESSOR,
        ),
        _family(
            "llava_next",
            "LlavaNextForConditionalGeneration LlavaNextProcessor",
            _NEXT_PIL,
            configs.llava_next,
            {"image_token": "<image>"},
            "<image>",
            **_LLAVA_PROCESSOR,
        ),
        _family(
            "llava_onevision",
            "LlavaOnevisionForConditionalGeneration LlavaOnevisionProcessor",
            _ONEVISION_PIL,
            configs.llava_onevision,
            {"image_token": "<image>", "video_token": "<video>"},
            "<image>",
            num_image_tokens=16,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_1",
        ),
        _family(
            "gemma3",
            "Gemma3ForConditionalGeneration Gemma3Processor",
            _pil("Gemma3ImageProcessorPil", size=_SQUARE),
            configs.gemma3,
            _GEMMA_TOKENS,
            "<start_of_image>",
            image_seq_length=4,
        ),
        _family(
            "paligemma",
            "PaliGemmaForConditionalGeneration PaliGemmaProcessor",
            _SIGLIP_PIL,
            configs.paligemma("gemma"),
            {"image_token": "<image>"},
            None,
        ),
        _family(
            "paligemma2",
            "PaliGemmaForConditionalGeneration PaliGemmaProcessor",
            _SIGLIP_PIL,
            configs.paligemma("gemma2"),
            {"image_token": "<image>"},
            None,
        ),
        _family(
            "mllama",
            "MllamaForConditionalGeneration MllamaProcessor",
            _pil("MllamaImageProcessorPil", size=_SQUARE, max_image_tiles=1),
            configs.mllama,
            _MLLAMA_TOKENS,
            "<|image|>",
        ),
        _family(
            "internvl",
            "InternVLForConditionalGeneration InternVLProcessor",
            _pil("GotOcr2ImageProcessorPil", size=_SQUARE),
            configs.internvl,
            _INTERNVL_TOKENS,
            "<IMG_CONTEXT>",
            image_seq_length=4,
        ),
    )
}
