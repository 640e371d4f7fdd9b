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
from typing import Any

import torch
from safetensors.torch import load_file

from shared.adapter import RemoteCodeRequired
from shared.errors import DataFormatError
from shared.evaluation.scores import option_probabilities
from shared.processors import ProcessorLoadError
from shared.prompts import TASKS, PromptVariant
from shared.silo_data import Sample, read_split
from silo_agent.evaluator import generate_answers, option_scores
from silo_agent.model import SiloModel, load_silo_model
from silo_agent.trainer import load_global_adapter


def predict(silo: SiloModel, samples: list[Sample], *, batch_size: int) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    silo.model.eval()
    with torch.inference_mode():
        for task_name in sorted({s.task for s in samples if s.task is not None}):
            chosen = [s for s in samples if s.task == task_name]
            probabilities = option_probabilities(option_scores(silo, chosen, batch_size=batch_size))
            options = TASKS[task_name].options
            for sample, row in zip(chosen, probabilities, strict=True):
                best = int(row.argmax())
                rows[sample.id] = {
                    "id": sample.id,
                    "task": task_name,
                    "prediction": TASKS[task_name].target(best),
                    "probabilities": dict(zip(options, map(float, row), strict=True)),
                }
        others = [s for s in samples if s.task is None]
        if others:
            for sample, answer in zip(
                others, generate_answers(silo, others, batch_size=batch_size), strict=True
            ):
                rows[sample.id] = {"id": sample.id, "prediction": answer}
    return [rows[s.id] for s in samples]


def _model(args: argparse.Namespace) -> SiloModel:
    config = json.loads((args.adapter / "adapter_config.json").read_text())
    try:
        return load_silo_model(
            args.model,
            device=args.device,
            lora_r=config["r"],
            lora_alpha=config["lora_alpha"],
            trust_remote_code=args.trust_remote_code,
        )
    except (RemoteCodeRequired, ProcessorLoadError, OSError) as exc:
        sys.exit(f"fedmllm-predict: model {args.model}: {exc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedmllm-predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="base model directory")
    parser.add_argument(
        "--adapter", type=Path, required=True, help="PEFT adapter directory (fedmllm-admin export)"
    )
    parser.add_argument("--data", type=Path, required=True, help="silo data directory")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument(
        "--prompt",
        choices=[v.value for v in PromptVariant],
        help="rebuild prompts with this template (as the run did)",
    )
    parser.add_argument("--out", type=Path, help="JSON lines file (default: standard output)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code shipped in the model directory (e.g. MiniCPM-V 2.6)",
    )
    args = parser.parse_args(argv)
    try:
        samples = read_split(args.data, args.split)
        adapter = load_file(str(args.adapter / "adapter_model.safetensors"))
    except (DataFormatError, OSError) as exc:
        sys.exit(f"fedmllm-predict: {exc}")
    silo = _model(args)
    load_global_adapter(silo, adapter)
    variant = PromptVariant(args.prompt) if args.prompt else None
    rows = predict(silo, [s.rendered(variant) for s in samples], batch_size=args.batch_size)
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if args.out is None:
        sys.stdout.write(lines)
    else:
        args.out.write_text(lines)
        print(f"{len(rows)} predictions written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
