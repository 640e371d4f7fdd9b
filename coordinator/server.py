"""Assembling and serving the coordinator: `serve(config)` is used by `__main__` and tests alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from peft import LoraConfig
from prometheus_client import start_http_server
from transformers import PretrainedConfig

from coordinator.admin_service import AdminService
from coordinator.checkpoint import CheckpointStore
from coordinator.federation import ControllerSettings, Federation
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.silo_service import FederationIdentity, SiloService
from shared.adapter import (
    canonical_config,
    config_fingerprint,
    initial_adapter,
    load_adapter_directory,
    load_base_config,
    lora_identity,
)
from shared.grpc_options import SERVER_OPTIONS
from shared.tensor_codec import StateDict
from shared.tls import TlsFiles, server_credentials
from shared.wire.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything the coordinator process is started with."""

    model_dir: Path  # base model directory; only its config.json is read
    checkpoint_dir: Path  # per-round checkpoints; a restart resumes from the latest
    tls: TlsFiles  # the coordinator's certificate, key and the federation CA
    host: str = "[::]"  # address to listen on
    port: int = 0  # gRPC port; 0 picks a free one
    metrics_port: int | None = None  # Prometheus /metrics port; None disables, 0 picks one
    adapter_dir: Path | None = None  # start from this PEFT adapter instead of a fresh one
    keep_checkpoints: int = 5  # round checkpoints kept per run
    heartbeat_interval_s: int = 5  # how often silos report
    max_workers: int = 64  # gRPC handler threads: each connected silo holds one for its stream
    controller: ControllerSettings = field(default_factory=ControllerSettings)


@dataclass
class RunningCoordinator:
    """A serving coordinator: its ports and state, for `__main__` and tests."""

    server: grpc.Server
    port: int
    metrics_port: int | None
    federation: Federation


def _adapter_source(
    config: CoordinatorConfig, base_config: PretrainedConfig
) -> tuple[LoraConfig, Callable[[int], StateDict]]:
    """The LoRA config and a factory of each run's initial adapter (seeded, or from a directory)."""
    if config.adapter_dir is not None:
        lora, state = load_adapter_directory(config.adapter_dir)
        return lora, lambda seed: {k: v.clone() for k, v in state.items()}
    lora, _ = initial_adapter(base_config, seed=0)
    return lora, lambda seed: initial_adapter(base_config, seed=seed)[1]


def adapter_config_json(lora: LoraConfig) -> str:
    """PEFT's adapter_config.json for exported adapters (sets written as sorted lists)."""
    data = lora.to_dict()
    for key, value in data.items():
        if isinstance(value, set):
            data[key] = sorted(value)
    return json.dumps(data, default=str, indent=2, sort_keys=True)


@contextmanager
def serve(config: CoordinatorConfig) -> Iterator[RunningCoordinator]:
    """Start the coordinator; on exit stop serving, the run left resumable from its checkpoint."""
    base_config = load_base_config(config.model_dir)
    canonical = canonical_config(base_config)
    lora, factory = _adapter_source(config, base_config)
    metrics = CoordinatorMetrics()
    registry = SiloRegistry(liveness_timeout_s=4.0 * config.heartbeat_interval_s)
    metrics.silos_connected.set_function(registry.connected_count)
    store = CheckpointStore(config.checkpoint_dir, keep=config.keep_checkpoints)
    store.lock()
    try:
        with _serving(config, store, registry, metrics, canonical, lora, factory) as running:
            yield running
    finally:
        store.unlock()


@contextmanager
def _serving(
    config: CoordinatorConfig,
    store: CheckpointStore,
    registry: SiloRegistry,
    metrics: CoordinatorMetrics,
    canonical: dict[str, Any],
    lora: LoraConfig,
    factory: Callable[[int], StateDict],
) -> Iterator[RunningCoordinator]:
    federation = Federation(
        registry=registry,
        store=store,
        metrics=metrics,
        initial_adapter=factory,
        settings=config.controller,
    )
    identity = FederationIdentity(
        canonical_config=canonical,
        fingerprint=config_fingerprint(canonical),
        lora=lora_identity(lora.to_dict()),
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers), options=SERVER_OPTIONS
    )
    pb_grpc.add_SiloServicer_to_server(
        SiloService(
            federation=federation,
            identity=identity,
            incoming_dir=config.checkpoint_dir / "incoming",
            heartbeat_interval_s=config.heartbeat_interval_s,
        ),
        server,
    )
    admin = AdminService(federation=federation, adapter_config_json=adapter_config_json(lora))
    pb_grpc.add_AdminServicer_to_server(admin, server)
    port = server.add_secure_port(f"{config.host}:{config.port}", server_credentials(config.tls))
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    metrics_server = None
    metrics_port = None
    if config.metrics_port is not None:
        metrics_server, _ = start_http_server(config.metrics_port, registry=metrics.registry)
        metrics_port = metrics_server.server_port
    server.start()
    log.info("coordinator serving on port %d (metrics: %s)", port, metrics_port)
    try:
        yield RunningCoordinator(
            server=server, port=port, metrics_port=metrics_port, federation=federation
        )
    finally:
        registry.closed.set()
        federation.shutdown()
        server.stop(grace=2.0).wait()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
