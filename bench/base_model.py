"""The benchmark's default base model: the tiny demo model, taught the answer format first.

A randomly initialised model cannot learn a task through a rank-8 adapter in a few rounds, so
it would make every method look alike. Like a pretrained MLLM that follows instructions but has
never seen the data sets, this base is trained (all weights, briefly) on the training data
sets' prompts, in every modality combination and both prompt variants, with answers shuffled
among the samples of the same kind: it learns to answer "(A) …" or "(B) …", "Yes" / "No" or an
organ, but not which answer is right. Zero-shot therefore starts near chance and every gain is
the adapter's.
"""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from bench.data.datasets import BadRecords, read_dataset
from bench.data.partition_files import write_directory
from bench.data.scenarios import Placed
from bench.data.synthetic_data import tokenizer_corpus
from bench.data.twins import TWINS
from bench.demo.tiny_model import build_tiny_model
from shared.prompts import PromptVariant
from shared.silo_data import Sample, read_split
from silo_agent.batching import training_batch

_PER_DATA_SET = 160  # format samples drawn from each data set's twin
_MODALITIES = ((True, True), (True, True), (True, False), (False, True))  # (image, text) kept


def _placed(sample: Placed, rng: random.Random) -> Placed:
    """A full-modal sample with its modalities thinned as a scenario might leave them."""
    if not (sample.image and sample.text):
        return sample
    image, text = rng.choice(_MODALITIES)
    return Placed(sample.sample, image, text)


def _shuffled_answers(samples: list[Sample], rng: random.Random) -> list[Sample]:
    """Each sample given the answer of another sample of the same source and kind."""
    kinds: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        kinds[(sample.source, sample.answer_type)].append(index)
    answered = list(samples)
    for members in kinds.values():
        answers = [samples[i].answer for i in members]
        rng.shuffle(answers)
        for index, answer in zip(members, answers, strict=True):
            answered[index] = replace(samples[index], answer=answer)
    return answered


def format_samples(scratch: Path, datasets: Sequence[str], *, seed: int) -> list[Sample]:
    """Training prompts of each data set's twin (written under `scratch`) with shuffled answers."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    for name in datasets:
        root = TWINS[name](scratch / "twins" / name, train=_PER_DATA_SET, test=0, seed=seed + 7)
        raw = read_dataset(name, root, "train", bad=BadRecords(skip=False))
        for variant in PromptVariant:
            directory = scratch / "format" / f"{name}-{variant.value}"
            placed = (_placed(Placed(s, s.has_image, s.has_text), rng) for s in raw)
            write_directory(directory, "train", placed, variant)
            samples += read_split(directory)
    return _shuffled_answers(samples, rng)


def format_pretrained_model(
    out: Path,
    *,
    datasets: Sequence[str] = ("hateful_memes",),
    steps: int = 150,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A tiny Idefics3 model with `layers` decoder layers at `out`, format-pretrained for
    `steps` batches of 16 on the prompts of `datasets`."""
    with tempfile.TemporaryDirectory() as scratch:
        samples = format_samples(Path(scratch), datasets, seed=seed)
        corpus = tokenizer_corpus() + [s.prompt for s in samples] + [s.answer for s in samples]
        build_tiny_model(out, family="idefics3", corpus=corpus, seed=seed, num_layers=layers)
        model = AutoModelForImageTextToText.from_pretrained(str(out), local_files_only=True)
        processor = AutoProcessor.from_pretrained(str(out), local_files_only=True)
        rng = random.Random(seed)
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            model(**training_batch(processor, rng.sample(samples, 16))).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.save_pretrained(str(out))
    return out
