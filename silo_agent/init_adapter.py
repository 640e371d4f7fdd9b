"""`silo-agent init-adapter --model DIR --out DIR`: the federation's initial LoRA adapter.

The coordinator derives the adapter from config.json alone, never running model code; a model
that ships its own code (MiniCPM-V 2.6) has no layout it could derive. This command builds the
model's module tree with that code (no weights, meta device) on a host that may run it and
writes a PEFT adapter directory, which the coordinator is started with (`--adapter DIR`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.adapter import (
    default_lora_config,
    initial_adapter,
    language_attention_targets,
    load_model_config,
    meta_model,
    write_adapter_directory,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silo-agent init-adapter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="base model directory")
    parser.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA A matrices")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code shipped in the model directory to build its module tree",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if (args.out / "adapter_model.safetensors").exists():
        sys.exit(
            f"silo-agent init-adapter: {args.out} already holds an adapter; choose a new --out"
        )
    try:
        config = load_model_config(args.model, trust_remote_code=args.trust_remote_code)
        model = meta_model(config, trust_remote_code=args.trust_remote_code)
        lora = default_lora_config(language_attention_targets(model))
        lora.r, lora.lora_alpha = args.lora_r, args.lora_alpha
        lora, state = initial_adapter(
            config, seed=args.seed, lora=lora, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        sys.exit(f"silo-agent init-adapter: model {args.model}: {exc}")
    write_adapter_directory(args.out, lora, state)
    parameters = sum(t.numel() for t in state.values())
    megabytes = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    print(
        f"{args.out}: {len(state)} LoRA tensors, {parameters:,} parameters ({megabytes:.1f} MB); "
        f"start the coordinator with --model {args.model} --adapter {args.out}"
    )
