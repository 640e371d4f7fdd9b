"""`silo-agent init-adapter --model DIR --out DIR`: the federation's initial LoRA adapter.

The coordinator derives the adapter from config.json alone, never running model code; a model
that ships its own code (MiniCPM-V 2.6) has no layout it could derive. This command builds the
model's module tree with that code (no weights, meta device) on a host that may run it and
writes a PEFT adapter directory, which the coordinator is started with (`--adapter DIR`).
"""

from __future__ import annotations

import argparse

from shared.adapter import (
    default_lora_config,
    initial_adapter,
    language_attention_targets,
    load_model_config,
    meta_model,
    write_adapter_directory,
)
from shared.cli import config_error, usage_error


def main(args: argparse.Namespace) -> int:
    if (args.out / "adapter_model.safetensors").exists():
        raise usage_error(f"{args.out} already holds an adapter; choose a new --out")
    try:
        config = load_model_config(args.model, trust_remote_code=args.trust_remote_code)
        model = meta_model(config, trust_remote_code=args.trust_remote_code)
        lora = default_lora_config(language_attention_targets(model))
        lora.r, lora.lora_alpha = args.lora_r, args.lora_alpha
        lora, state = initial_adapter(
            config, seed=args.seed, lora=lora, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise config_error(f"model {args.model}: {exc}") from None
    write_adapter_directory(args.out, lora, state)
    parameters = sum(t.numel() for t in state.values())
    megabytes = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    print(
        f"{args.out}: {len(state)} LoRA tensors, {parameters:,} parameters ({megabytes:.1f} MB); "
        f"start the coordinator with --model {args.model} --adapter {args.out}"
    )
    return 0
