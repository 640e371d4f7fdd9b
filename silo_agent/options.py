"""The model flags of `silo-agent` and `silo-agent check`, and what can be checked of them
before the model loads (no torch import for `--help` or a wrong path)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from shared.cli import Parser, config_error, usage_error

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SHARDING = ("none", "fsdp")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how the base model is loaded, for `silo-agent` and `check` alike."""
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="local Hugging Face directory of the base model and its processor",
    )
    parser.add_argument("--quantize", choices=["4bit"], help="load the base model in 4-bit NF4")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="base weights and autocast (LoRA stays fp32); with --quantize 4bit the compute "
        "dtype. auto: bf16 on a GPU (fp16 where it has no bf16), fp32 on CPU",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass: much less memory, ~30%% more compute",
    )
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=8, help="LoRA alpha")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code shipped in the model directory (e.g. MiniCPM-V 2.6); "
        "only for a directory you trust",
    )


def check_data_dir(data: Path) -> None:
    """A silo data directory with a split to read (docs/silo-data.md)."""
    if not data.is_dir():
        raise config_error(f"--data {data} is not a directory (see docs/silo-data.md)")
    if not any((data / f"{split}.jsonl").is_file() for split in ("train", "test")):
        raise config_error(f"--data {data} has neither train.jsonl nor test.jsonl")


def check_model_arguments(args: argparse.Namespace) -> None:
    """The model directory and the device as far as they can be checked without loading."""
    device = getattr(args, "device", "auto")
    if not _DEVICE.fullmatch(device):
        raise usage_error(f"--device {device!r} is not auto, cpu, cuda or cuda:N")
    if not args.model.is_dir():
        raise config_error(f"--model {args.model} is not a directory: pass the base model's")
    if not (args.model / "config.json").is_file():
        raise config_error(
            f"--model {args.model} has no config.json: pass a Hugging Face model directory "
            "with its weights and processor"
        )


def check_device(device: str) -> None:
    """A CUDA device asked of a PyTorch build without CUDA, or a GPU that is not there."""
    if not device.startswith("cuda"):
        return
    import torch  # the caller loads the model next anyway

    if torch.version.cuda is None:
        raise config_error(
            f"--device {device}: this PyTorch ({torch.__version__}) is a CPU build; install "
            "PyTorch's CUDA build on this host (docs/deploy.md §2) or pass --device cpu"
        )
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise config_error(
            f"--device {device}: this host shows {count} CUDA device(s) (check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES) or pass --device cpu"
        )


def check_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="silo-agent check",
        description="Prove locally, contacting no one, that this silo can train: every bad "
        "record, unreadable images, the modality mix, sequences longer than the model's "
        "context, and one forward and backward pass per modality mix (seconds per step, peak "
        "memory, LoRA parameters). Exit 0: ok; 1: problems listed; 4: cannot be checked.",
    )
    parser.add_argument("--data", type=Path, required=True, help="silo data directory")
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size", type=int, default=4, help="rows of the trial batches (the run's batch size)"
    )
    return parser


def init_adapter_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="silo-agent init-adapter",
        description="The federation's initial LoRA adapter for a model that ships its own code "
        "(the coordinator cannot derive its layout from config.json): builds the module tree "
        "with that code (no weights) and writes a PEFT adapter directory for the coordinator's "
        "--adapter (docs/models.md).",
    )
    parser.add_argument("--model", type=Path, required=True, help="base model directory")
    parser.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=8, help="LoRA alpha")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA A matrices")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code shipped in the model directory to build its module tree",
    )
    return parser


def _count(minimum: int) -> type[int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    return parse  # type: ignore[return-value]


def add_hardware_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how `silo-agent` computes a round (docs/models.md, hardware section)."""
    group = parser.add_argument_group("hardware (see docs/models.md)")
    group.add_argument(
        "--micro-batch",
        type=_count(0),
        default=0,
        help="samples per forward/backward pass, gradients accumulated up to the round's batch "
        "size (0: the whole batch at once)",
    )
    group.add_argument(
        "--loader-workers",
        type=_count(-1),
        default=-1,
        help="processes that prepare batches while the GPU computes (-1: 4 per GPU process, "
        "fewer on small hosts; 0 on CPU)",
    )
    group.add_argument(
        "--nproc-per-node",
        type=_count(1),
        default=1,
        help="training processes on this host, one per GPU (DistributedDataParallel); "
        "or start silo-agent under torchrun",
    )
    group.add_argument(
        "--shard",
        choices=SHARDING,
        default="none",
        help="fsdp: shard the base weights across the processes (a model that does not fit "
        "one GPU); training only",
    )
    group.add_argument(
        "--dist-timeout",
        type=_count(1),
        default=1800,
        help="seconds a training process waits for the others inside a round",
    )


def check_hardware_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, refused before anything loads."""
    processes = int(os.environ.get("WORLD_SIZE", args.nproc_per_node))
    if args.eval_only and processes > 1:
        raise usage_error("--eval-only runs in one process: drop --nproc-per-node")
    if args.shard != "fsdp":
        return
    if processes == 1:
        raise usage_error("--shard fsdp shards across processes: add --nproc-per-node N")
    if args.quantize:
        raise usage_error("--shard fsdp cannot shard 4-bit weights: drop --shard (4-bit with DDP)")
    if (args.data / "test.jsonl").is_file():
        raise usage_error(
            f"--shard fsdp trains only, and {args.data / 'test.jsonl'} asks for evaluation: "
            "evaluate with a silo agent without --shard"
        )
