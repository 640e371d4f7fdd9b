"""Silo throughput: one silo round (the project's trainer) against a plain transformers + peft
loop on the same model, data, batches and precision, interleaved in one run; and the memory of a
7B-deep, narrow stand-in trained in bf16, with and without gradient checkpointing.

    .venv/bin/python -m bench.silo_throughput [--device cpu|cuda] [--repeats 3] [--write-docs]

Each measurement runs in a fresh process, so that each peak is its own: on CPU the peak resident
memory above the loaded model (sampled every 2 ms), on a GPU the peak allocated memory.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model, get_peft_model_state_dict
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForImageTextToText,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
)

from bench.data.synthetic_data import tokenizer_corpus, write_silo
from bench.demo.tiny_model import build_tiny_model
from bench.docs import replace_section
from shared.adapter import default_lora_config, language_attention_targets
from shared.processors import load_processor
from shared.prompts import HATEFUL_MEMES, PromptVariant, build_prompt
from shared.silo_data import Sample, read_split
from silo_agent.batching import training_batch
from silo_agent.hardware import TrainingHardware, autocast, compute_dtype
from silo_agent.model import load_silo_model
from silo_agent.step_loader import round_batches
from silo_agent.trainer import LocalPlan, train_round

DOCS = Path(__file__).parents[1] / "docs" / "benchmarks.md"
TARGET = 0.95  # the silo round's tokens/s over the plain loop's
MIB = 1024**2
Train = Callable[[list[Sample]], None]


@dataclass
class Measurement:
    """One timed round in its own process."""

    loop: str
    device_name: str
    tokens: int  # non-padding tokens the round computed
    steps: int
    seconds: float
    peak_mib: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def build_model(out: Path, *, hidden: int, layers: int, positions: int = 1024) -> Path:
    """The tiny Idefics3 family (vision tower over 32x32 images) with a Llama decoder of
    `layers` x `hidden` (heads of 32), random seeded weights, saved as a model directory."""
    build_tiny_model(out, family="idefics3", corpus=tokenizer_corpus(), seed=0, num_layers=layers)
    config = json.loads((out / "config.json").read_text())
    config["text_config"].update(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 64),
        head_dim=32,
        max_position_embeddings=positions,
    )
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(Idefics3Config.from_dict(config)).save_pretrained(str(out))
    return out


def write_long_samples(out: Path, *, samples: int, words: int) -> Path:
    """Samples whose caption is `words` words long: a real VLM sample's length (~1k tokens)."""
    directory = write_silo(out, train=samples, test=0, seed=0)
    path = directory / "train.jsonl"
    vocabulary = [w for w in " ".join(tokenizer_corpus()).split() if w.isalpha()]
    rng = random.Random(0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["text"] = " ".join(rng.choice(vocabulary) for _ in range(words))
        record["conversations"][0]["content"] = build_prompt(
            HATEFUL_MEMES, text=record["text"], has_image=True, variant=PromptVariant.ORIGINAL
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def _silo_loop(spec: dict[str, Any], device: torch.device, workers: int) -> Train:
    """The project's round, as `silo-agent` runs it."""
    silo = load_silo_model(
        Path(spec["model"]),
        device=str(device),
        precision=spec["precision"],
        gradient_checkpointing=spec.get("checkpointing", False),
    )
    state = {n: t.detach().cpu().clone() for n, t in get_peft_model_state_dict(silo.model).items()}
    plan = LocalPlan(learning_rate=1e-4, local_epochs=1, batch_size=spec["batch_size"], seed=0)
    hardware = TrainingHardware(loader_workers=workers)

    def train(samples: list[Sample]) -> None:
        train_round(silo, samples, plan, state, hardware=hardware)

    return train


def _plain_loop(spec: dict[str, Any], device: torch.device, workers: int) -> Train:
    """transformers + peft as their documentation trains a LoRA: the same model, LoRA targets,
    collation, batch order, optimizer, clipping and autocast; nothing else."""
    dtype = compute_dtype(spec["precision"], device)
    base = AutoModelForImageTextToText.from_pretrained(spec["model"], dtype=dtype)
    torch.nn.Module.to(base, device)  # in place; transformers' typed `to` takes no device
    processor = load_processor(Path(spec["model"]))
    model = get_peft_model(base, default_lora_config(language_attention_targets(base)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def train(samples: list[Sample]) -> None:
        batches = round_batches(samples, spec["batch_size"], 0, 0)
        collate = functools.partial(training_batch, processor)
        loader: DataLoader[dict[str, torch.Tensor]] = DataLoader(
            batches,  # type: ignore[arg-type]  # a list is a map-style data set
            batch_size=None,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        model.train()
        for host in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in host.items()}
            with autocast(device, dtype):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return train


class PeakResidentMemory:
    """The largest resident set size while inside, sampled from /proc every 2 ms."""

    def __init__(self) -> None:
        self.peak = self.start = self._now()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _now() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MIB

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._now())

    def __enter__(self) -> PeakResidentMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def _timed(train: Train, samples: list[Sample], device: torch.device) -> float:
    started = time.perf_counter()
    train(samples)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def measure(spec: dict[str, Any]) -> Measurement:
    """Load, one warm-up step, then the faster of two timed rounds over every sample (the
    host is shared: the other round absorbs a neighbour's burst)."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    workers = 2 if device.type == "cuda" else 0
    samples = read_split(Path(spec["data"]))
    loop = _silo_loop if spec["loop"] == "silo" else _plain_loop
    train = loop(spec, device, workers)
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # loading's freed heap back to the system
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakResidentMemory() as resident:
        train(samples[: spec["batch_size"]])
        seconds = min(_timed(train, samples, device) for _ in range(2))
    processor = load_processor(Path(spec["model"]))
    batches = round_batches(samples, spec["batch_size"], 0, 0)
    tokens = sum(int(training_batch(processor, b)["attention_mask"].sum()) for b in batches)
    cuda = device.type == "cuda"
    return Measurement(
        loop=spec["loop"],
        device_name=torch.cuda.get_device_name(device) if cuda else "CPU",
        tokens=tokens,
        steps=len(batches),
        seconds=seconds,
        peak_mib=torch.cuda.max_memory_allocated(device) / MIB
        if cuda
        else resident.peak - resident.start,
    )


def _child(spec: dict[str, Any]) -> Measurement:
    command = [sys.executable, "-m", "bench.silo_throughput", "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['loop']} measurement failed:\n{done.stderr[-3000:]}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def ratio_rows(workdir: Path, device: str, repeats: int, threads: int) -> tuple[list[str], float]:
    """The silo round and the plain loop in turns, alternating which goes first."""
    precision = "fp32" if device == "cpu" else "bf16"
    model = build_model(workdir / "model", hidden=256, layers=8)
    data = write_silo(workdir / "data", train=32, test=0, seed=0)
    spec: dict[str, Any] = {"model": str(model), "data": str(data), "device": device}
    spec |= {"precision": precision, "threads": threads}
    runs: dict[str, list[Measurement]] = {"plain": [], "silo": []}
    for repeat in range(repeats):
        for loop in ("silo", "plain") if repeat % 2 == 0 else ("plain", "silo"):
            runs[loop].append(_child({**spec, "loop": loop, "batch_size": 4}))
    speed = {loop: statistics.median(m.tokens_per_s for m in ms) for loop, ms in runs.items()}
    memory = {loop: statistics.median(m.peak_mib for m in ms) for loop, ms in runs.items()}
    ratio = speed["silo"] / speed["plain"]
    name = runs["silo"][0].device_name
    rows = [
        f"| {name} | {precision} | {loop} | {speed[loop]:,.0f} | {memory[loop]:,.0f} | "
        + (f"**{ratio:.2f}**" if loop == "silo" else "1.00")
        + " |"
        for loop in ("plain", "silo")
    ]
    return rows, ratio


def standin_rows(workdir: Path, device: str, threads: int) -> list[str]:
    """The 32-layer stand-in on ~1k-token samples in bf16, checkpointing off and on."""
    model = build_model(workdir / "standin", hidden=128, layers=32, positions=4096)
    data = write_long_samples(workdir / "long", samples=4, words=820)
    spec: dict[str, Any] = {"model": str(model), "data": str(data), "device": device}
    spec |= {"precision": "bf16", "threads": threads}
    rows = []
    for checkpointing in (False, True):
        m = _child({**spec, "loop": "silo", "batch_size": 2, "checkpointing": checkpointing})
        rows.append(
            f"| {m.device_name} | bf16 | {'on' if checkpointing else 'off'} | "
            f"{m.tokens // m.steps:,} | {m.peak_mib:,.0f} | {m.tokens_per_s:,.0f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="silo_throughput", description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: all")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each loop")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of each measurement (1: steady on a shared host)",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, as JSON
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asdict(measure(json.loads(args.child)))))
        return
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    ratios, standin = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for device in devices:
            rows, ratio = ratio_rows(Path(scratch) / device, device, args.repeats, args.threads)
            print(f"{device}: silo / plain tokens/s {ratio:.3f} (target >= {TARGET})", flush=True)
            ratios += rows
            standin += standin_rows(Path(scratch) / device, device, args.threads)
    body = "\n".join(
        [
            "| device | precision | loop | tokens/s | peak MiB | silo / plain |",
            "|---|---|---|---:|---:|---:|",
            *ratios,
            "",
            "| device | precision | checkpointing | tokens a step | peak MiB | tokens/s |",
            "|---|---|---|---:|---:|---:|",
            *standin,
        ]
    )
    print(body)
    if args.write_docs:
        replace_section(DOCS, "silo-throughput", body)


if __name__ == "__main__":
    main()
