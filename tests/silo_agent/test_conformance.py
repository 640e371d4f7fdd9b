"""Model conformance: every supported family trains and scores correctly through the silo.

One tiny random model per family (bench.demo.tiny_families, seeded, built offline; the
remote-code family is written by tests/silo_agent/remote_code_model.py), loaded exactly as a silo
loads a real one. For each family and modality mix: the loss covers exactly the answer tokens,
the answer cannot leak into the logits that predict it, option scoring agrees with a brute-force
forward pass per option, one round changes only the language model's LoRA q,k,v,o weights,
gradient checkpointing and micro-batches change no update, and the 4-bit path trains.
docs/models.md's table is checked against SUPPORT below.
"""

from __future__ import annotations

import functools
import json
import math
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from bench.data.synthetic_data import tokenizer_corpus, write_silo
from bench.demo.tiny_model import build_tiny_model
from shared.adapter import (
    ATTENTION_PROJECTIONS,
    canonical_config,
    config_fingerprint,
    initial_adapter,
    load_base_config,
    load_model_config,
    lora_identity,
)
from shared.prompts import TASKS, PromptVariant
from shared.silo_data import Sample, read_split
from shared.tensor_codec import layout_of
from silo_agent.batching import IGNORE_INDEX, modality_kind
from silo_agent.evaluator import generate_answers, option_scores
from silo_agent.failures import TrainingFailed
from silo_agent.hardware import TrainingHardware
from silo_agent.model import (
    SiloModel,
    enable_gradient_checkpointing,
    load_silo_model,
    prepare_batch,
)
from silo_agent.trainer import LocalPlan, load_global_adapter, train_round
from tests.silo_agent.remote_code_model import write_remote_code_model
from tests.silo_agent.support_table import MIXES, SUPPORT, render_table, supported_mixes

FAMILY_NAMES = sorted(SUPPORT)
# Families a hospital would fine-tune; each one this transformers version ships must be covered.
MAINSTREAM = {
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava",
    "llava_next",
    "llava_onevision",
    "idefics3",
    "smolvlm",
    "gemma3",
    "paligemma",
    "mllama",
    "internvl",
}


def build_family(family: str, directory: Path) -> Path:
    if SUPPORT[family].remote_code:
        return write_remote_code_model(directory, corpus=tokenizer_corpus(), seed=0)
    return build_tiny_model(directory, family=family, corpus=tokenizer_corpus(), seed=0)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    """Two samples of each modality kind, and a batch mixing all three."""
    full = read_split(write_silo(tmp_path_factory.mktemp("data"), train=4, test=0, seed=3))
    variant = PromptVariant.ORIGINAL
    kinds = {
        "image+text": full[:2],
        "image only": [replace(s, text=None, has_text=False).rendered(variant) for s in full[2:]],
        "text only": [replace(s, image=None).rendered(variant) for s in full[:2]],
    }
    assert all(modality_kind(s) == kind for kind, group in kinds.items() for s in group)
    mixed = [kinds["text only"][0], kinds["image+text"][0], kinds["image only"][0]]
    return {**kinds, "mixed": mixed}


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def model_dir(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_family(family, tmp_path_factory.mktemp(family))


@pytest.fixture(scope="module")
def silo(family: str, model_dir: Path) -> Iterator[SiloModel]:
    loaded = load_silo_model(model_dir, device="cpu", trust_remote_code=SUPPORT[family].remote_code)
    loaded.model.eval()
    yield loaded


def supported_batch(family: str, samples: dict[str, list[Sample]]) -> list[Sample]:
    """One sample of every kind the family supports."""
    return [samples[m][0] for m in supported_mixes(family) if m != "mixed"]


@pytest.mark.parametrize("mix", MIXES)
def test_loss_covers_exactly_the_answer_tokens(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]], mix: str
) -> None:
    batch_samples = samples[mix]
    if mix not in supported_mixes(family):
        refusal = silo.refusal(batch_samples)
        assert refusal is not None and refusal.startswith(f"{SUPPORT[family].model_type}:")
        assert "text only" in refusal
        with pytest.raises(TrainingFailed) as failed:
            train_round(silo, batch_samples, LocalPlan(1e-3, 1, 2, 0), random_adapter(silo))
        assert failed.value.reason == "modality"
        return
    batch = silo.batch(batch_samples)
    labels, ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
    for row, sample in enumerate(batch_samples):
        answer_at = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        first, last = answer_at[0], answer_at[-1]
        assert answer_at == list(range(first, last + 1))  # one span, after the whole prompt
        assert int(attention[row].sum()) == last + 1  # then padding only, unlabelled
        expected = silo_answer_ids(silo, sample)
        assert labels[row, first : last + 1].tolist() == expected
        assert ids[row, first : last + 1].tolist() == expected
    assert torch.isfinite(silo.forward(batch).loss)


def silo_answer_ids(silo: SiloModel, sample: Sample) -> list[int]:
    """The answer and end-of-turn tokens, from the answer string and the chat template alone."""
    tokenizer = silo.processor.tokenizer
    prompt = {"role": "user", "content": "Q"}
    answer = {"role": "assistant", "content": sample.answer}
    if silo.processor.chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        suffix = sample.answer + tokenizer.eos_token  # PaliGemma: answer then end of text
    else:
        template = silo.processor.chat_template or tokenizer.chat_template
        plain = [
            {**m, "content": [{"type": "text", "text": m["content"]}]}
            if silo.family != "minicpmv"
            else m
            for m in (prompt, answer)
        ]
        start = tokenizer.apply_chat_template(
            plain[:1], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(plain, chat_template=template, tokenize=False)
        suffix = full[len(start) :]
    ids: list[int] = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).startswith(sample.answer)
    return ids


def random_adapter(silo: SiloModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """A non-zero adapter (A and B random), so that LoRA takes part in every check."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.05
        for name, tensor in get_peft_model_state_dict(silo.model).items()
    }


def logits_of(silo: SiloModel, batch: dict[str, object]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = silo.forward(batch).logits.float()
    return logits


def test_answer_tokens_never_reach_the_logits_before_them(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]]
) -> None:
    load_global_adapter(silo, random_adapter(silo))
    silo.model.eval()
    batch = silo.batch(supported_batch(family, samples))
    answer = batch.pop("labels") != IGNORE_INDEX
    reference = logits_of(silo, batch)
    ids = batch["input_ids"]
    tokenizer = silo.processor.tokenizer
    plain, other = tokenizer("zz q", add_special_tokens=False)["input_ids"][:2]
    every = torch.where(ids == plain, other, plain)
    # every answer token changed: no prompt position may notice
    changed = logits_of(silo, {**batch, "input_ids": torch.where(answer, every, ids)})
    prompt = batch["attention_mask"].bool() & ~answer
    assert (changed - reference)[prompt].abs().max() < 1e-6
    assert (changed - reference)[answer].abs().max() > 1e-4  # the change did reach the model
    # the last answer token changed: nothing before it may notice (causal within the answer)
    last = torch.zeros_like(answer)
    for row in range(len(ids)):
        last[row, int(answer[row].nonzero().max())] = True
    changed = logits_of(silo, {**batch, "input_ids": torch.where(last, every, ids)})
    before_last = last.long().flip(1).cumsum(1).flip(1).bool() & ~last
    assert (changed - reference)[before_last].abs().max() < 1e-6


def test_option_scores_match_a_forward_pass_per_option(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]]
) -> None:
    load_global_adapter(silo, random_adapter(silo, seed=1))
    silo.model.eval()
    chosen = supported_batch(family, samples)
    with torch.inference_mode():
        scores = option_scores(silo, chosen, batch_size=len(chosen))
        task = TASKS["hateful_memes"]
        for row, sample in enumerate(chosen):
            for option in range(len(task.options)):
                batch = silo.batch([replace(sample, answer=task.target(option))])
                labels = batch.pop("labels")[0]
                logits = silo.forward(batch).logits[0].float()
                expected = sum(
                    float(torch.log_softmax(logits[position - 1], dim=-1)[labels[position]])
                    for position in range(1, len(labels))
                    if labels[position] != IGNORE_INDEX
                )
                assert abs(float(scores[row, option]) - expected) < 1e-4


def test_greedy_answers_come_back_for_every_sample(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]]
) -> None:
    """Med-VQA answers are generated through the family's own generation path; padding the
    batch (on the left) changes no sample's greedy answer."""
    load_global_adapter(silo, random_adapter(silo, seed=3))
    silo.model.eval()
    chosen = supported_batch(family, samples)
    with torch.inference_mode():
        batched = generate_answers(silo, chosen, batch_size=len(chosen), max_new_tokens=4)
        alone = [generate_answers(silo, [s], batch_size=1, max_new_tokens=4)[0] for s in chosen]
    assert batched == alone


def lora_modules(silo: SiloModel) -> dict[str, torch.nn.Module]:
    """The LoRA-wrapped modules, named as in the base model."""
    return {
        name.removeprefix("base_model.model."): module
        for name, module in silo.model.named_modules()
        if isinstance(module, LoraLayer) and isinstance(module, torch.nn.Module)
    }


def language_projections(silo: SiloModel) -> set[str]:
    """The language model's q,k,v,o projections, found from the decoder, not from LoRA."""
    base = silo.model.get_base_model()
    decoder = base.get_decoder()
    prefix = next(name for name, module in base.named_modules() if module is decoder)
    return {
        name
        for name, _ in base.named_modules()
        if name.startswith(prefix + ".") and name.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS
    }


def assert_round_changes_only_language_lora(
    silo: SiloModel, chosen: list[Sample], *, learning_rate: float
) -> None:
    before = {n: p.detach().clone() for n, p in silo.model.named_parameters()}
    state = random_adapter(silo, seed=2)
    result = train_round(silo, chosen, LocalPlan(learning_rate, 1, 2, 0), state)
    assert result.steps == -(-len(chosen) // 2) and math.isfinite(result.mean_loss)
    after = dict(silo.model.named_parameters())
    lora = {n for n in before if ".lora_" in n}
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= lora
    assert {n for n, p in after.items() if p.requires_grad} == lora
    wrapped = lora_modules(silo)
    assert set(wrapped) == language_projections(silo)
    r = silo.lora.r
    expected = sum(r * (m.in_features + m.out_features) for m in wrapped.values())  # type: ignore[operator]
    assert sum(d.numel() for d in result.delta.values()) == expected
    assert sum(after[n].numel() for n in lora) == expected


def test_one_round_changes_only_the_language_models_lora(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]]
) -> None:
    chosen = [s for m in supported_mixes(family) if m != "mixed" for s in samples[m]]
    assert_round_changes_only_language_lora(silo, chosen, learning_rate=1e-2)


@contextmanager
def dropout_off(model: torch.nn.Module) -> Iterator[None]:
    """Dropout masks follow how a batch is split; the gradients of the split must not."""
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    rates = [m.p for m in dropouts]
    for module in dropouts:
        module.p = 0.0
    try:
        yield
    finally:
        for module, rate in zip(dropouts, rates, strict=True):
            module.p = rate


def test_checkpointing_and_micro_batches_leave_the_update_unchanged(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]]
) -> None:
    chosen = [s for m in supported_mixes(family) if m != "mixed" for s in samples[m]]
    plan = LocalPlan(
        1e-1, 1, len(chosen) - 1, 0, local_optimizer="sgd"
    )  # a whole and a short batch
    state = random_adapter(silo, seed=4)
    base = silo.model.get_base_model()
    with dropout_off(silo.model):
        whole = train_round(silo, chosen, plan, state)
        enable_gradient_checkpointing(silo.model, family)
        try:
            split = train_round(silo, chosen, plan, state, hardware=TrainingHardware(micro_batch=1))
        finally:
            base.activation_checkpointing_disable()
    assert split.steps == whole.steps == 2
    assert abs(split.mean_loss - whole.mean_loss) < 1e-5
    for name, delta in whole.delta.items():
        torch.testing.assert_close(split.delta[name], delta, rtol=1e-4, atol=1e-6)


def test_a_loader_worker_in_its_own_process_prepares_the_same_batches(
    family: str, silo: SiloModel, samples: dict[str, list[Sample]]
) -> None:
    """Loader workers start from a fork server, not from the agent: what they prepare with
    arrives pickled, and must batch every supported sample exactly as the agent would."""
    prepare = functools.partial(prepare_batch, silo.interface, silo.family)
    copied = pickle.loads(pickle.dumps(prepare))
    for sample in supported_batch(family, samples):
        here, there = prepare([sample]), copied([sample])
        assert here.keys() == there.keys()
        for key, value in here.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, there[key]), key


def test_four_bit_base_loads_and_trains(
    family: str, model_dir: Path, samples: dict[str, list[Sample]]
) -> None:
    import bitsandbytes as bnb

    quantised = load_silo_model(
        model_dir, device="cpu", quantize="4bit", trust_remote_code=SUPPORT[family].remote_code
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantised.model.modules())
    assert_round_changes_only_language_lora(
        quantised, supported_batch(family, samples), learning_rate=1e-2
    )


def test_the_coordinator_derives_the_same_adapter_without_the_weights(
    family: str, silo: SiloModel, model_dir: Path
) -> None:
    """The coordinator builds the layout from config.json on the meta device (the remote-code
    family through `silo-agent init-adapter`); a silo joins only if the two agree."""
    remote = SUPPORT[family].remote_code
    config = load_model_config(model_dir, trust_remote_code=remote)
    lora, state = initial_adapter(config, seed=0, trust_remote_code=remote)
    assert layout_of(state) == silo.adapter_layout
    assert lora_identity(lora.to_dict()) == lora_identity(json.loads(silo.lora_config_json))
    assert config_fingerprint(canonical_config(load_base_config(model_dir))) == silo.fingerprint


def test_docs_table_matches_the_suite() -> None:
    table = render_table()
    docs = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    assert table in docs, "docs/models.md's table differs from the suite; it should be:\n" + table


def test_the_suite_covers_the_mainstream_families_transformers_ships() -> None:
    covered = {row.model_type for row in SUPPORT.values()}
    assert MAINSTREAM & set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) <= covered
