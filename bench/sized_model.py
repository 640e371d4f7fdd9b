"""A base model directory whose LoRA adapter has a chosen size, for transport and memory
benchmarks: only config.json (the coordinator reads nothing else; silos here speak the
protocol directly), an Idefics3 whose Llama text model is as wide and deep as needed."""

from __future__ import annotations

import json
from pathlib import Path

from bench.data.synthetic_data import tokenizer_corpus
from bench.demo.tiny_model import build_tiny_model

# LoRA r 8 on q, k, v and o: 4 x 8 x (in + out) = 64 H values per decoder layer.
VALUES_PER_LAYER_AND_WIDTH = 64
HEAD_DIM = 128


def _width(values: int) -> int:
    """A text width for about `values` adapter values: wide enough to keep layers few."""
    for width in (8192, 4096, 2048, 1024, 512):
        if values >= 8 * VALUES_PER_LAYER_AND_WIDTH * width:
            return width
    return 256


def sized_model(out: Path, *, adapter_bytes: int) -> Path:
    """A model directory whose float32 LoRA adapter is within a layer of `adapter_bytes`."""
    if (out / "config.json").exists():
        return out
    build_tiny_model(out, family="idefics3", corpus=tokenizer_corpus(), seed=0)
    values = adapter_bytes // 4
    width = _width(values)
    layers = max(1, round(values / (VALUES_PER_LAYER_AND_WIDTH * width)))
    config = json.loads((out / "config.json").read_text())
    config["text_config"].update(
        hidden_size=width,
        intermediate_size=width,
        head_dim=HEAD_DIM,
        num_attention_heads=width // HEAD_DIM,
        num_key_value_heads=width // HEAD_DIM,
        num_hidden_layers=layers,
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for weights in out.glob("*.safetensors"):
        weights.unlink()  # they no longer match the config; nothing here loads them
    return out
