"""A tiny remote-code model directory laid out like MiniCPM-V 2.6's (trust_remote_code).

config.json names model type `minicpmv` and maps the Auto classes to Python files in the
directory, as the release does; the code written here keeps MiniCPM-V's interfaces (the model's
`forward(data, **kwargs)` over a Qwen2 language model `llm`, `image_bound`/`tgt_sizes` from the
processor, `(<image>./</image>)` placeholders, `generate(..., tokenizer, decode_text)`) with a
one-layer patch embedding and an attention pooler standing in for the SigLIP tower and resampler.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import SiglipImageProcessorPil

from bench.demo.tiny_model import train_tokenizer

QUERY_NUM = 4
PATCH = 8
IMAGE = 32

CONFIGURATION = """
from transformers import Qwen2Config


class MiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"
    query_num: int = 4
    patch_size: int = 8
    vision_dim: int = 32
"""

MODELING = """
import math

import torch
from torch import nn
from transformers import Qwen2ForCausalLM, Qwen2PreTrainedModel

from .configuration_minicpm import MiniCPMVConfig


class VisionStub(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        self.embed = nn.Linear(3 * config.patch_size**2, config.vision_dim)

    def forward(self, pixel_values):  # [n, 3, P, (H/P)*W] as the processor lays patches out
        n, c, p, length = pixel_values.shape
        rows = pixel_values.reshape(n, c, p, -1, p)  # [n, 3, P, (H/P)*(W/P), P]
        patches = rows.permute(0, 3, 1, 2, 4).reshape(n, rows.shape[3], c * p * p)
        return self.embed(patches)


class Resampler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.query = nn.Parameter(torch.randn(config.query_num, config.hidden_size) * 0.02)
        self.kv = nn.Linear(config.vision_dim, config.hidden_size)

    def forward(self, features):
        kv = self.kv(features)
        weights = torch.softmax(self.query @ kv.transpose(1, 2) / math.sqrt(kv.shape[-1]), -1)
        return weights @ kv


class MiniCPMV(Qwen2PreTrainedModel):
    config_class = MiniCPMVConfig

    def __init__(self, config):
        super().__init__(config)
        self.llm = Qwen2ForCausalLM(config)
        self.vpm = VisionStub(config)
        self.resampler = Resampler(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.llm.lm_head

    def get_decoder(self):
        return self.llm

    def get_vllm_embedding(self, data):
        embeds = self.llm.get_input_embeddings()(data["input_ids"])
        for row, (pixels, bounds) in enumerate(zip(data["pixel_values"], data["image_bound"])):
            if len(pixels) == 0 or len(bounds) == 0:
                continue
            features = self.resampler(self.vpm(torch.stack(list(pixels)).to(embeds.dtype)))
            positions = torch.cat([torch.arange(int(s), int(e)) for s, e in bounds])
            features = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
            embeds[row, positions.to(embeds.device)] = features
        return embeds

    def forward(self, data, **kwargs):
        embeds = self.get_vllm_embedding(data)
        return self.llm(
            input_ids=None, position_ids=data["position_ids"].long(), inputs_embeds=embeds, **kwargs
        )

    def generate(self, input_ids=None, pixel_values=None, tgt_sizes=None, image_bound=None,
                 attention_mask=None, tokenizer=None, decode_text=False, **kwargs):
        data = {"input_ids": input_ids, "pixel_values": pixel_values, "image_bound": image_bound}
        with torch.inference_mode():
            embeds = self.get_vllm_embedding(data)
            output = self.llm.generate(
                inputs_embeds=embeds, attention_mask=attention_mask, pad_token_id=0, **kwargs
            )
        if decode_text:
            texts = [tokenizer.decode(row[row != 0], skip_special_tokens=True) for row in output]
            return [text.strip() for text in texts]
        return output
"""

PROCESSING = """
import torch
from transformers import ProcessorMixin

PLACEHOLDER = "(<image>./</image>)"


class MiniCPMVProcessor(ProcessorMixin):
    def __init__(self, image_processor=None, tokenizer=None, query_num=4, patch_size=8, **kwargs):
        self.query_num = query_num
        self.patch_size = patch_size
        super().__init__(image_processor, tokenizer)

    def by_patch(self, image):  # (C, H, W) -> (C, P, (H/P)*W), as MiniCPM-V lays patches out
        c, h, w = image.shape
        p = self.patch_size
        return image.view(c, h // p, p, w).permute(0, 2, 1, 3).reshape(c, p, -1)

    def __call__(self, text, images=None, return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        image_lists = images if images is not None else [[] for _ in texts]
        start = self.tokenizer.convert_tokens_to_ids("<image>")
        end = self.tokenizer.convert_tokens_to_ids("</image>")
        slot = "<image>" + self.tokenizer.unk_token * self.query_num + "</image>"
        ids_list, bounds, pixels, tgt_sizes = [], [], [], []
        for prompt, images_of_prompt in zip(texts, image_lists):
            chunks = prompt.split(PLACEHOLDER)
            assert len(chunks) - 1 == len(images_of_prompt), "one placeholder per image"
            ids = torch.tensor(self.tokenizer.encode(slot.join(chunks)))
            starts = (ids == start).nonzero().flatten() + 1
            ends = (ids == end).nonzero().flatten()
            ids_list.append(ids)
            bounds.append(torch.stack([starts, ends], dim=1))
            values = []
            if images_of_prompt:
                values = self.image_processor(images_of_prompt, return_tensors="pt")["pixel_values"]
            pixels.append([self.by_patch(v) for v in values])
            side = [[v.shape[1] // self.patch_size, v.shape[2] // self.patch_size] for v in values]
            tgt_sizes.append(torch.tensor(side) if side else [])
        width = max(len(ids) for ids in ids_list)
        input_ids = torch.zeros((len(texts), width), dtype=torch.long)
        attention_mask = torch.zeros((len(texts), width), dtype=torch.bool)
        for row, ids in enumerate(ids_list):
            pad = width - len(ids)  # left padding, as MiniCPM-V pads
            input_ids[row, pad:] = ids
            attention_mask[row, pad:] = True
            bounds[row] = bounds[row] + pad
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixels,
            "image_bound": bounds,
            "tgt_sizes": tgt_sizes,
        }
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_AUTO_MAP = {
    "AutoConfig": "configuration_minicpm.MiniCPMVConfig",
    "AutoModel": "modeling_minicpmv.MiniCPMV",
    "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV",
}


def write_remote_code_model(
    out: Path, *, corpus: Iterable[str], seed: int = 0, num_layers: int = 2
) -> Path:
    """A model directory whose code, config and processor come from its own Python files."""
    out.mkdir(parents=True, exist_ok=True)
    for name, source in (
        ("configuration_minicpm.py", CONFIGURATION),
        ("modeling_minicpmv.py", MODELING),
        ("processing_minicpmv.py", PROCESSING),
    ):
        (out / name).write_text(source.lstrip())
    tokens = {"image_start": "<image>", "image_end": "</image>", "im_start": "<|im_start|>"}
    tokenizer = train_tokenizer(corpus, tokens={**tokens, "im_end": "<|im_end|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    config = {
        "model_type": "minicpmv",
        "architectures": ["MiniCPMV"],
        "auto_map": _AUTO_MAP,
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
        "query_num": QUERY_NUM,
        "patch_size": PATCH,
        "vision_dim": 32,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _write_weights(out, seed)
    SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}).save_pretrained(str(out))
    processor = {
        "processor_class": "MiniCPMVProcessor",
        "auto_map": {"AutoProcessor": "processing_minicpmv.MiniCPMVProcessor"},
        "query_num": QUERY_NUM,
        "patch_size": PATCH,
    }
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def _write_weights(out: Path, seed: int) -> None:
    """Seeded random weights, saved by the model's own class (loaded as remote code)."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(_config_from(out), trust_remote_code=True, dtype=torch.float32)
    model.save_pretrained(str(out))


def _config_from(out: Path) -> object:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(out), trust_remote_code=True, local_files_only=True)
