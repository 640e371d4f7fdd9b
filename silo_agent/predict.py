"""`fedmllm-predict --model DIR --adapter DIR --data DIR`: predictions of an exported adapter.

Writes one JSON line per sample: for multiple-choice tasks the chosen option and every
option's probability, for Med-VQA the generated answer. Runs where the data is: nothing is
sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.cli import Parser, argv_or_sys, config_error, run_command
from shared.errors import DataFormatError
from shared.logs import configure_logging
from shared.prompts import PromptVariant
from shared.silo_data import read_split
from silo_agent.options import check_device, check_model_arguments


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedmllm-predict", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="base model directory")
    parser.add_argument(
        "--adapter", type=Path, required=True, help="PEFT adapter directory (fedmllm-admin export)"
    )
    parser.add_argument("--data", type=Path, required=True, help="silo data directory")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="which split")
    parser.add_argument(
        "--prompt",
        choices=[v.value for v in PromptVariant],
        help="rebuild prompts with this template (as the run did)",
    )
    parser.add_argument("--out", type=Path, help="JSON lines file (default: standard output)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code shipped in the model directory (e.g. MiniCPM-V 2.6)",
    )
    return parser


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level="WARNING", log_format="text", role="predict")
    check_model_arguments(args)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (args.adapter / name).is_file():
            raise config_error(f"--adapter {args.adapter} has no {name} (fedmllm-admin export)")
    try:
        samples = read_split(args.data, args.split)
    except DataFormatError as exc:
        raise config_error(str(exc)) from None
    check_device(args.device)
    from silo_agent.prediction import predictions  # torch and the model, once the files are there

    variant = PromptVariant(args.prompt) if args.prompt else None
    rows = predictions(args, [s.rendered(variant) for s in samples])
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if args.out is None:
        sys.stdout.write(lines)
        return 0
    try:
        args.out.write_text(lines)
    except OSError as exc:
        raise config_error(f"cannot write --out {args.out}: {exc.strerror}") from None
    print(f"{len(rows)} predictions written to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    run_command("fedmllm-predict", _main, argv_or_sys(argv))


if __name__ == "__main__":
    main()
