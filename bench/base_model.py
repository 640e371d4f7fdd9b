"""The benchmark's default base model: the tiny demo model, taught the answer format first.

A randomly initialised model cannot learn a task through a rank-8 adapter in a few rounds, so
it would make every method look alike. Like a pretrained MLLM that follows instructions but has
never seen the data set, this base is trained (all weights, briefly) on the task's prompts with
random answers: it learns to answer "(A) …" or "(B) …" but not which one is right. Zero-shot
therefore starts at chance and every gain is the adapter's.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from bench.data.synthetic_data import tokenizer_corpus, write_silo
from bench.demo.tiny_model import build_tiny_model
from shared.prompts import HATEFUL_MEMES
from shared.silo_data import read_split
from silo_agent.batching import training_batch


def format_pretrained_model(out: Path, *, steps: int = 150, seed: int = 0) -> Path:
    build_tiny_model(out, family="idefics3", corpus=tokenizer_corpus(), seed=seed)
    with tempfile.TemporaryDirectory() as scratch:
        samples = read_split(write_silo(Path(scratch) / "format", train=160, test=0, seed=seed))
        model = AutoModelForImageTextToText.from_pretrained(str(out), local_files_only=True)
        processor = AutoProcessor.from_pretrained(str(out), local_files_only=True)
        rng = random.Random(seed)
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            batch = [
                replace(s, answer=HATEFUL_MEMES.target(rng.randrange(2)))
                for s in rng.sample(samples, 16)
            ]
            model(**training_batch(processor, batch)).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.save_pretrained(str(out))
    return out
