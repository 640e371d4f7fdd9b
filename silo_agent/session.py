"""The silo agent once its checks passed: its data, model, judge and metrics, then its session
with the coordinator until it is stopped (each failure one line with its exit code)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

import torch

from shared.adapter import RemoteCodeRequired
from shared.cli import EXIT_INTERRUPTED, config_error, refused
from shared.connection import Connection
from shared.errors import DataFormatError, IncompatibleSilo
from shared.evaluation.judge import JudgeConfig, LLMJudge
from shared.metrics_http import serve_metrics
from shared.model_identity import weights_fingerprint
from shared.ports import port_problem
from shared.processors import ProcessorLoadError
from shared.silo_data import Sample, has_split, read_split
from shared.tls import TlsFiles
from silo_agent.client import SiloAgent
from silo_agent.distributed import round_trainer
from silo_agent.metrics import SiloMetrics, certificate_name
from silo_agent.model import SiloModel, model_from_arguments

log = logging.getLogger("silo_agent")


def _splits(args: argparse.Namespace) -> tuple[list[Sample], list[Sample]]:
    try:
        samples = [] if args.eval_only else read_split(args.data, "train")
        test = read_split(args.data, "test") if has_split(args.data, "test") else []
    except DataFormatError as exc:
        raise config_error(f"{exc} (silo-agent check lists every problem)") from None
    if args.eval_only and not test:
        raise config_error(f"--eval-only needs {args.data / 'test.jsonl'}")
    return samples, test


def _model_for(args: argparse.Namespace, samples: list[Sample]) -> SiloModel:
    """The model as the flags say; it must load, and it must take the data's modality mix
    (checked before joining, not mid-round)."""
    try:
        silo = model_from_arguments(args)
    except (RemoteCodeRequired, ProcessorLoadError, OSError, ValueError) as exc:
        raise config_error(f"model {args.model}: {exc}") from None
    refusal = silo.refusal(samples)
    if refusal is not None:
        raise config_error(f"{args.data}: {refusal} (see `silo-agent check`)")
    return silo


def _judge(args: argparse.Namespace) -> LLMJudge | None:
    if not args.judge_model:
        return None
    if not os.environ.get(args.judge_key_env):
        raise config_error(
            f"--judge-model {args.judge_model}: set ${args.judge_key_env} to the judge's API "
            "key, or name its variable with --judge-key-env"
        )
    config = JudgeConfig(
        model=args.judge_model,
        base_url=args.judge_base_url,
        cache_path=args.judge_cache,
        api_key_env=args.judge_key_env,
    )
    return LLMJudge(config)


def _metrics_tls(args: argparse.Namespace, connection: Connection) -> TlsFiles | None:
    """The /metrics endpoint's own server certificate, and the CA its scrapers must hold."""
    if args.metrics_tls_cert is None:
        return None
    return TlsFiles(
        cert=args.metrics_tls_cert,
        key=args.metrics_tls_key,
        ca=args.metrics_client_ca or connection.files.ca,
    )


def _metrics(args: argparse.Namespace, connection: Connection) -> SiloMetrics:
    try:
        metrics = SiloMetrics(silo=certificate_name(connection.files.cert))
    except (OSError, ValueError) as exc:
        raise config_error(f"--cert: {exc}") from None
    if args.metrics_port >= 0:
        try:
            serve_metrics(
                metrics.registry,
                port=args.metrics_port,
                host=args.metrics_host,
                tls=_metrics_tls(args, connection),
            )
        except OSError as exc:
            raise config_error(
                port_problem(exc, args.metrics_host, args.metrics_port, flag="--metrics-port")
            ) from None
    return metrics


def serve(args: argparse.Namespace, connection: Connection) -> int:
    """Load, then take round tasks until SIGTERM (exit 0) or Ctrl-C (exit 130)."""
    samples, test = _splits(args)
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
        return 0
    agent = SiloAgent(
        coordinator=connection.target,
        tls=connection.files,
        silo=silo,
        samples=samples,
        test_samples=test,
        judge=_judge(args),
        metrics=_metrics(args, connection),
        weights_fingerprint=weights_fingerprint(args.model),
        train=train,
    )
    interrupted = threading.Event()

    def on_signal(number: int, _frame: object) -> None:
        if number == signal.SIGINT:
            interrupted.set()
        agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        agent.run()
    except IncompatibleSilo as exc:
        raise refused(f"refused by the coordinator: {exc}") from None
    log.info("stopped")
    return EXIT_INTERRUPTED if interrupted.is_set() else 0
