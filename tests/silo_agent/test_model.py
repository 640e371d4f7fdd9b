"""The silo's model: Auto-class loading for two families, LoRA on the language model only,
mixed-modality batches, answer-only labels, and the 4-bit path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict

from shared.adapter import initial_adapter, load_base_config
from shared.prompts import IMAGE_MARKER
from shared.silo_data import Sample, read_split
from shared.tensor_codec import layout_of
from silo_agent.batching import IGNORE_INDEX, training_batch
from silo_agent.model import load_silo_model
from silo_agent.trainer import LocalPlan, train_round

VISION_WORDS = ("vision", "visual")


def _mixed_samples(data_dir: Path) -> list[Sample]:
    full = read_split(data_dir)[:2]
    text_only = Sample(
        id="t",
        image=None,
        prompt=full[0].prompt.replace(IMAGE_MARKER + "\n", ""),
        answer=full[0].answer,
    )
    image_only = Sample(
        id="i", image=full[1].image, prompt=f"{IMAGE_MARKER}\nWhat is shown?", answer=full[1].answer
    )
    return [full[0], text_only, image_only, full[1]]


@pytest.fixture(params=["tiny_model", "tiny_llava"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    path: Path = request.getfixturevalue(request.param)
    return path


def test_lora_targets_only_the_language_model(model_dir: Path) -> None:
    silo = load_silo_model(model_dir, device="cpu")
    names = list(get_peft_model_state_dict(silo.model))
    assert names and all(".lora_" in n for n in names)
    assert not [n for n in names if any(w in n for w in VISION_WORDS)]
    projections = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert silo.lora.r == 8 and silo.lora.lora_alpha == 8 and silo.lora.lora_dropout == 0.05


def test_coordinator_layout_from_config_alone_matches_the_loaded_model(model_dir: Path) -> None:
    silo = load_silo_model(model_dir, device="cpu")
    _, coordinator_state = initial_adapter(load_base_config(model_dir), seed=0)
    assert layout_of(coordinator_state) == silo.adapter_layout


def test_mixed_modalities_in_one_batch_label_only_the_answer(
    model_dir: Path, silo_data: dict[str, Path]
) -> None:
    silo = load_silo_model(model_dir, device="cpu")
    samples = _mixed_samples(silo_data["silo-1"])
    batch = training_batch(silo.processor, samples)
    tokenizer = silo.processor.tokenizer
    for row, sample in enumerate(samples):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tokenizer.decode(labelled).startswith(sample.answer)
    assert int((batch["attention_mask"] == 1).sum()) > int((batch["labels"] != IGNORE_INDEX).sum())
    loss = silo.model(**batch).loss
    assert torch.isfinite(loss)


def test_local_round_lowers_loss_and_returns_a_delta(
    model_dir: Path, silo_data: dict[str, Path]
) -> None:
    silo = load_silo_model(model_dir, device="cpu")
    samples = _mixed_samples(silo_data["silo-1"]) + read_split(silo_data["silo-2"])
    _, state = initial_adapter(load_base_config(model_dir), seed=1)
    plan = LocalPlan(learning_rate=1e-2, local_epochs=1, batch_size=4, seed=0)
    first = train_round(silo, samples, plan, state)
    assert first.num_samples == len(samples) and first.steps == 4
    assert layout_of(first.delta) == layout_of(state)
    assert any(bool(d.abs().sum() > 0) for d in first.delta.values())
    moved = {k: state[k] + first.delta[k] for k in state}
    for _ in range(3):
        later = train_round(silo, samples, plan, moved)
        moved = {k: moved[k] + later.delta[k] for k in moved}
    assert later.mean_loss < first.mean_loss


def test_four_bit_quantised_base_trains(tiny_llava: Path, silo_data: dict[str, Path]) -> None:
    import bitsandbytes as bnb

    silo = load_silo_model(tiny_llava, device="cpu", quantize="4bit")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in silo.model.modules())
    _, state = initial_adapter(load_base_config(tiny_llava), seed=0)
    result = train_round(
        silo,
        read_split(silo_data["silo-1"])[:4],
        LocalPlan(learning_rate=1e-3, local_epochs=1, batch_size=2, seed=0),
        state,
    )
    assert result.steps == 2 and all(torch.isfinite(d).all() for d in result.delta.values())
