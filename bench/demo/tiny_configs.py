"""Configs of the tiny families: decoders of hidden 64 and vision towers over 32x32 images.

Each function takes the tokenizer's ids (vocabulary size, special tokens) and the number of
decoder layers, and returns the family's own config class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import transformers

IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN = 64


def _text(
    ids: dict[str, int], layers: int, model_type: str = "llama", **extra: Any
) -> dict[str, Any]:
    """A tiny decoder: hidden 64, 4 query and 2 key/value heads of 16."""
    return {
        "model_type": model_type,
        "vocab_size": ids["vocab_size"],
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "pad_token_id": ids["pad"],
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        **extra,
    }


def _vision(**extra: Any) -> dict[str, Any]:
    """A tiny ViT over 32x32 images in 8x8 patches."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        **extra,
    }


_QWEN_VISION = {"depth": 2, "num_heads": 2, "patch_size": PATCH_SIZE, "spatial_merge_size": 2}


def _qwen_ids(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "image_token_id": ids["image_token"],
        "video_token_id": ids["video_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "vision_end_token_id": ids["vision_eos_token"],
    }


def qwen2_vl(ids: dict[str, int], layers: int) -> Any:
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3]}
    return transformers.Qwen2VLConfig(
        text_config=_text(ids, layers, "qwen2_vl_text", rope_parameters=mrope),
        vision_config={**_QWEN_VISION, "embed_dim": 32, "hidden_size": HIDDEN, "mlp_ratio": 2},
        **_qwen_ids(ids),
    )


def qwen2_5_vl(ids: dict[str, int], layers: int) -> Any:
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3]}
    vision = {**_QWEN_VISION, "hidden_size": 32, "intermediate_size": 64}
    return transformers.Qwen2_5_VLConfig(
        text_config=_text(ids, layers, "qwen2_5_vl_text", rope_parameters=mrope),
        vision_config={**vision, "out_hidden_size": HIDDEN, "window_size": 16},
        **_qwen_ids(ids),
    )


def qwen3_vl(ids: dict[str, int], layers: int) -> Any:
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    vision = {**_QWEN_VISION, "hidden_size": 32, "intermediate_size": 64}
    return transformers.Qwen3VLConfig(
        text_config=_text(ids, layers, "qwen3_vl_text", rope_parameters=mrope),
        vision_config={
            **vision,
            "out_hidden_size": HIDDEN,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [1],
        },
        **_qwen_ids(ids),
    )


def idefics3(ids: dict[str, int], layers: int) -> Any:
    return transformers.Idefics3Config(
        text_config=_text(ids, layers),
        vision_config=_vision(),
        scale_factor=2,
        image_token_id=ids["image_token"],
    )


def smolvlm(ids: dict[str, int], layers: int) -> Any:
    return transformers.SmolVLMConfig(
        text_config=_text(ids, layers),
        vision_config=_vision(),
        scale_factor=2,
        image_token_id=ids["image_token"],
    )


_CLIP_VISION = {"model_type": "clip_vision_model", "projection_dim": 32, **_vision()}


def llava(ids: dict[str, int], layers: int) -> Any:
    return transformers.LlavaConfig(
        text_config=_text(ids, layers),
        vision_config=_CLIP_VISION,
        image_token_index=ids["image_token"],
        vision_feature_layer=-1,
    )


def llava_next(ids: dict[str, int], layers: int) -> Any:
    return transformers.LlavaNextConfig(
        text_config=_text(ids, layers),
        vision_config=_CLIP_VISION,
        image_token_index=ids["image_token"],
        vision_feature_layer=-1,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
    )


def llava_onevision(ids: dict[str, int], layers: int) -> Any:
    return transformers.LlavaOnevisionConfig(
        text_config=_text(ids, layers, "qwen2"),
        vision_config={"model_type": "siglip_vision_model", **_vision()},
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        vision_aspect_ratio="anyres_max_1",
    )


def gemma3(ids: dict[str, int], layers: int) -> Any:
    text = _text(ids, layers, "gemma3_text", query_pre_attn_scalar=16, sliding_window=64)
    return transformers.Gemma3Config(
        text_config=text,
        vision_config={"model_type": "siglip_vision_model", **_vision()},
        mm_tokens_per_image=4,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )


def paligemma(text_type: str) -> Callable[[dict[str, int], int], Any]:
    def config(ids: dict[str, int], layers: int) -> Any:
        return transformers.PaliGemmaConfig(
            text_config=_text(ids, layers, text_type),
            vision_config={
                "model_type": "siglip_vision_model",
                **_vision(),
                "projection_dim": HIDDEN,
            },
            image_token_index=ids["image_token"],
            projection_dim=HIDDEN,
            hidden_size=HIDDEN,
        )

    return config


def mllama(ids: dict[str, int], layers: int) -> Any:
    vision = _vision(
        attention_heads=2,
        num_global_layers=1,
        max_num_tiles=1,
        supported_aspect_ratios=[[1, 1]],
        intermediate_layers_indices=[0],
        vision_output_dim=64,
    )
    return transformers.MllamaConfig(
        text_config=_text(ids, layers, "mllama_text_model", cross_attention_layers=[1]),
        vision_config=vision,
        image_token_index=ids["image_token"],
    )


def internvl(ids: dict[str, int], layers: int) -> Any:
    return transformers.InternVLConfig(
        text_config=_text(ids, layers, "qwen2"),
        vision_config=_vision(model_type="internvl_vision"),
        image_token_id=ids["context_image_token"],
        image_seq_length=4,
    )
