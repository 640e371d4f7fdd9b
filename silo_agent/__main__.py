"""`silo-agent`: train the federation's adapter on this silo's private data."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path

from shared.errors import DataFormatError, IncompatibleSilo
from shared.silo_data import read_split
from shared.tls import add_tls_arguments, tls_files
from silo_agent.client import SiloAgent
from silo_agent.model import load_silo_model


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silo-agent",
        description="Join a FedMLLM federation and train its LoRA adapter on local data. "
        "Raw data never leaves this machine: only adapter deltas are sent.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="silo data directory (train.jsonl, images; see docs/silo-data.md)",
    )
    parser.add_argument("--coordinator", required=True, help="coordinator HOST:PORT")
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="local Hugging Face directory of the base model and its processor",
    )
    add_tls_arguments(parser, whose="this silo's")
    parser.add_argument("--quantize", choices=["4bit"], help="load the base model in 4-bit NF4")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=8)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s %(levelname)s silo[{args.cert.stem}] %(message)s"
    )
    log = logging.getLogger("silo_agent")
    # PEFT calls a transformers API deprecated for v6; nothing an operator can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        samples = read_split(args.data, "train")
    except DataFormatError as exc:
        sys.exit(f"silo-agent: {exc}")
    silo = load_silo_model(
        args.model,
        device=args.device,
        quantize=args.quantize,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
    )
    log.info("model %s loaded on %s; %d training samples", args.model, silo.device, len(samples))
    agent = SiloAgent(
        coordinator=args.coordinator,
        tls=tls_files(args),
        silo=silo,
        samples=samples,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop())
    try:
        agent.run()
    except IncompatibleSilo as exc:
        sys.exit(f"silo-agent: refused by the coordinator: {exc}")
    log.info("stopped")


if __name__ == "__main__":
    main()
