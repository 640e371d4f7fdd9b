"""`silo-agent`: train the federation's adapter on this silo's private data."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import torch
from prometheus_client import start_http_server

from shared.adapter import RemoteCodeRequired
from shared.errors import DataFormatError, IncompatibleSilo
from shared.evaluation.judge import JudgeConfig, LLMJudge
from shared.processors import ProcessorLoadError
from shared.silo_data import Sample, has_split, read_split
from shared.tls import add_tls_arguments, tls_files
from silo_agent.client import SiloAgent
from silo_agent.distributed import round_trainer, start_processes
from silo_agent.hardware import HardwareError, add_hardware_arguments
from silo_agent.metrics import SiloMetrics, certificate_name
from silo_agent.model import SiloModel, add_model_arguments, model_from_arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silo-agent",
        description="Join a FedMLLM federation and train its LoRA adapter on local data. "
        "Raw data never leaves this machine: only adapter deltas are sent.",
        epilog="Also: `silo-agent check --data DIR --model DIR` proves locally that this silo "
        "can train; `silo-agent init-adapter --model DIR --out DIR` writes the initial adapter "
        "for a model with its own code (see docs/models.md).",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="silo data directory (train.jsonl, images; see docs/silo-data.md)",
    )
    parser.add_argument("--coordinator", required=True, help="coordinator HOST:PORT")
    add_model_arguments(parser)
    add_hardware_arguments(parser)
    add_tls_arguments(parser, whose="this silo's")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); set it when agents share a host",
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="join only to evaluate: test.jsonl, no training"
    )
    parser.add_argument(
        "--judge-model",
        help="LLM judge for open Med-VQA answers (else token "
        "recall); your test questions and answers are sent to its endpoint",
    )
    parser.add_argument(
        "--judge-base-url",
        default="https://api.openai.com/v1",
        help="OpenAI-compatible endpoint of the judge",
    )
    parser.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key",
    )
    parser.add_argument(
        "--judge-cache",
        type=Path,
        default=Path.home() / ".cache" / "fedmllm" / "judge.jsonl",
        help="verdict cache, so that a rerun costs nothing",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=-1,
        help="serve Prometheus /metrics on this port (-1: off)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def _model_for(args: argparse.Namespace, samples: list[Sample]) -> SiloModel:
    """The model as the flags say, or exit in one line: it cannot load, or it cannot train
    the data's modality mix (before joining, not mid-round)."""
    try:
        silo = model_from_arguments(args)
    except (RemoteCodeRequired, ProcessorLoadError, OSError, HardwareError) as exc:
        sys.exit(f"silo-agent: model {args.model}: {exc}")
    refusal = silo.refusal(samples)
    if refusal is not None:
        sys.exit(f"silo-agent: {args.data}: {refusal} (see `silo-agent check`)")
    return silo


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from silo_agent.check import main as check  # the local check needs no gRPC or TLS

        check(argv[1:])
        return
    if argv[:1] == ["init-adapter"]:
        from silo_agent.init_adapter import main as init_adapter

        init_adapter(argv[1:])
        return
    args = _parser().parse_args(argv)
    start_processes(args, argv)  # with --nproc-per-node N: this command as N processes
    if args.threads < 0:
        sys.exit(f"silo-agent: --threads must be 0 or more, not {args.threads}")
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s %(levelname)s silo[{args.cert.stem}] %(message)s"
    )
    log = logging.getLogger("silo_agent")
    try:
        samples = [] if args.eval_only else read_split(args.data, "train")
        test = read_split(args.data, "test") if has_split(args.data, "test") else []
    except DataFormatError as exc:
        sys.exit(f"silo-agent: {exc}")
    if args.eval_only and not test:
        sys.exit(f"silo-agent: --eval-only needs {args.data / 'test.jsonl'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    silo = _model_for(args, [*samples, *test])
    log.info(
        "model %s loaded on %s with %d torch thread(s); %d training and %d test samples",
        args.model,
        silo.device,
        torch.get_num_threads(),
        len(samples),
        len(test),
    )
    train = round_trainer(args, silo)
    if train.follower:  # ranks > 0 of a multi-GPU silo: rank 0 talks to the coordinator
        train.follow(silo, samples)
        return
    judge = None
    if args.judge_model:
        judge = LLMJudge(
            JudgeConfig(
                model=args.judge_model,
                base_url=args.judge_base_url,
                cache_path=args.judge_cache,
                api_key_env=args.judge_key_env,
            )
        )
    metrics = SiloMetrics(silo=certificate_name(args.cert))
    if args.metrics_port >= 0:
        start_http_server(args.metrics_port, registry=metrics.registry)
    agent = SiloAgent(
        coordinator=args.coordinator,
        tls=tls_files(args),
        silo=silo,
        samples=samples,
        test_samples=test,
        judge=judge,
        metrics=metrics,
        train=train,
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
