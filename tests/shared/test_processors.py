"""Processors load without torchvision where it cannot be imported, and unchanged where it can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers
from PIL import Image
from transformers import AutoProcessor

from bench.data.synthetic_data import tokenizer_corpus
from bench.demo.tiny_model import build_tiny_model
from shared import processors
from shared.processors import load_processor, torchvision_works


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("qwen2_5_vl"), family="qwen2_5_vl", corpus=tokenizer_corpus()
    )


@pytest.mark.skipif(torchvision_works(), reason="torchvision imports here: the stock path runs")
def test_a_video_family_loads_without_torchvision(qwen: Path) -> None:
    saved = json.loads((qwen / "processor_config.json").read_text())
    assert (
        saved["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    )  # as released
    with pytest.raises(OSError, match="video processor"):
        AutoProcessor.from_pretrained(str(qwen), local_files_only=True)  # the stock path here
    processor = load_processor(qwen)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert isinstance(processor, transformers.Qwen2_5_VLProcessor)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert not hasattr(processor, "video_processor")
    image = Image.new("RGB", (32, 32), (200, 20, 20))
    encoded = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>what is shown?"],
        images=[[image]],
        return_tensors="pt",
    )
    image_tokens = int((encoded["input_ids"] == processor.image_token_id).sum())
    assert image_tokens == int(encoded["image_grid_thw"].prod()) // 4  # merged 2x2 patches


def test_where_torchvision_works_the_stock_processor_is_used(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A working torchvision cannot exist on this CPU host, so it is assumed here."""
    monkeypatch.setattr(processors, "torchvision_works", lambda: True)
    assert type(load_processor(tiny_model)) is transformers.Idefics3Processor
