"""Assembling and serving the coordinator: `serve(config)` is used by `__main__` and tests alike."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import resource
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from peft import LoraConfig
from transformers import PretrainedConfig

from coordinator.admin_service import AdminService
from coordinator.aggregation import native
from coordinator.aggregation.heap import limit_retention
from coordinator.aggregation.spool import INCOMING
from coordinator.base_model import BaseModel
from coordinator.checkpoint import CheckpointStore
from coordinator.federation import ControllerSettings, Federation
from coordinator.guard import CallLimits, PeerGuard
from coordinator.identity import CertificateExpiry, IdentityBook
from coordinator.join_check import FederationIdentity
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import SiloRegistry
from coordinator.silo_service import SiloService, SiloServiceSettings
from shared.adapter import (
    canonical_config,
    config_fingerprint,
    initial_adapter,
    load_adapter_directory,
    load_base_config,
    lora_identity,
)
from shared.grpc_options import SERVER_OPTIONS
from shared.metrics_http import serve_metrics
from shared.pki import ROLE_ADMIN, ROLE_SILO
from shared.pki.fingerprint import not_after_of
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
    metrics_host: str = "127.0.0.1"  # /metrics address: loopback unless a scraper is remote
    metrics_tls: bool = False  # serve /metrics over TLS, scrapers with a federation certificate
    adapter_dir: Path | None = None  # start from this PEFT adapter instead of a fresh one
    keep_checkpoints: int = 5  # round checkpoints kept per run
    workers: int = 8  # threads for blocking work: chunk hashing, validation, folds, checkpoints
    max_connections: int = 10_000  # TCP connections held at once (each silo holds one)
    handshake_timeout_s: float = 10.0  # a connection that has not finished TLS by then is closed
    crl: Path | None = None  # a CRL file (fedmllm-certs revoke) honoured as it changes
    abandon_run: bool = False  # stop an unfinished run that does not fit, instead of refusing
    call_limits: CallLimits = field(default_factory=CallLimits)  # per-certificate concurrency
    silo_service: SiloServiceSettings = field(default_factory=SiloServiceSettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)


@dataclass
class RunningCoordinator:
    """A serving coordinator: its ports and state, for `__main__` and tests."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    federation: Federation
    metrics_host: str = ""  # the address /metrics is bound to


def _adapter_source(
    config: CoordinatorConfig, base_config: PretrainedConfig
) -> tuple[LoraConfig, Callable[[int], StateDict]]:
    """The LoRA config and a factory of each run's initial adapter (seeded, or from a directory)."""
    if config.adapter_dir is not None:
        lora, state = load_adapter_directory(config.adapter_dir)
        return lora, lambda seed: {k: v.clone() for k, v in state.items()}
    lora, _ = initial_adapter(base_config, seed=0)
    return lora, lambda seed: initial_adapter(base_config, seed=seed)[1]


def _adapter_digest(adapter_dir: Path | None) -> str:
    """How runs' initial adapters start: fresh, or a given adapter file's SHA-256."""
    if adapter_dir is None:
        return "fresh"
    with (adapter_dir / "adapter_model.safetensors").open("rb") as handle:
        return "adapter sha256 " + hashlib.file_digest(handle, "sha256").hexdigest()


def adapter_config_json(lora: LoraConfig) -> str:
    """PEFT's adapter_config.json for exported adapters (sets written as sorted lists)."""
    data = lora.to_dict()
    for key, value in data.items():
        if isinstance(value, set):
            data[key] = sorted(value)
    return json.dumps(data, default=str, indent=2, sort_keys=True)


def _raise_descriptor_limit() -> None:
    """Lift the soft open-file limit to the hard one: every silo holds a connection, and the
    common soft default (1,024) would cap the federation well below its size."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def serve(config: CoordinatorConfig) -> Iterator[RunningCoordinator]:
    """Start the coordinator; on exit stop serving, the run left resumable from its checkpoint."""
    _raise_descriptor_limit()
    limit_retention()
    native.library()  # built (once per machine) or found wanting now, not in a silo's upload
    base_config = load_base_config(config.model_dir)
    canonical = canonical_config(base_config)
    lora, factory = _adapter_source(config, base_config)
    metrics = CoordinatorMetrics()
    registry = SiloRegistry(liveness_timeout_s=4.0 * config.silo_service.heartbeat_interval_s)
    metrics.silos_connected.set_function(registry.connected_count)
    store = CheckpointStore(config.checkpoint_dir, keep=config.keep_checkpoints)
    store.lock()
    try:
        federation = Federation(
            registry=registry,
            store=store,
            metrics=metrics,
            initial_adapter=factory,
            settings=config.controller,
            base_model=BaseModel(
                canonical_config=canonical,
                fingerprint=config_fingerprint(canonical),
                adapter_source=_adapter_digest(config.adapter_dir),
            ),
            abandon=config.abandon_run,
        )
        identity = FederationIdentity(
            canonical_config=canonical,
            fingerprint=config_fingerprint(canonical),
            lora=lora_identity(lora.to_dict()),
        )
        with _serving(config, federation, identity, adapter_config_json(lora)) as running:
            yield running
    finally:
        store.unlock()


async def _start_server(
    config: CoordinatorConfig,
    federation: Federation,
    identity: FederationIdentity,
    exported_config: str,
    workers: ThreadPoolExecutor,
) -> tuple[grpc.aio.Server, int]:
    own_pem, _, ca_pem = config.tls.read()
    identities = IdentityBook(state_dir=config.checkpoint_dir, crl=config.crl, ca_pem=ca_pem)
    federation.metrics.registry.register(
        CertificateExpiry(identities=identities, own_not_after=not_after_of(own_pem).timestamp())
    )
    guard = PeerGuard(
        roles={"fedmllm.v1.Silo": ROLE_SILO, "fedmllm.v1.Admin": ROLE_ADMIN},
        limits=config.call_limits,
        admission=identities.admission,
        on_refusal=lambda method, code: federation.metrics.refused_calls.labels(
            method=method, code=code
        ).inc(),
    )
    options = [
        *SERVER_OPTIONS,
        ("grpc.max_allowed_incoming_connections", config.max_connections),
        ("grpc.server_handshake_timeout_ms", int(1000 * config.handshake_timeout_s)),
    ]
    server = grpc.aio.server(interceptors=[guard], options=options)
    pb_grpc.add_SiloServicer_to_server(
        SiloService(
            federation=federation,
            identity=identity,
            incoming_dir=config.checkpoint_dir / INCOMING,
            settings=config.silo_service,
            workers=workers,
            identities=identities,
        ),
        server,
    )
    admin = AdminService(
        federation=federation,
        adapter_config_json=exported_config,
        workers=workers,
        identities=identities,
    )
    pb_grpc.add_AdminServicer_to_server(admin, server)
    port = server.add_secure_port(f"{config.host}:{config.port}", server_credentials(config.tls))
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    await server.start()
    return server, port


def _metrics_server(config: CoordinatorConfig, federation: Federation) -> WSGIServer:
    """/metrics on its own address; over TLS, only scrapers with a certificate of the
    federation's CA are answered (the coordinator's own certificate serves it)."""
    assert config.metrics_port is not None
    return serve_metrics(
        federation.metrics.registry,
        port=config.metrics_port,
        host=config.metrics_host,
        tls=config.tls if config.metrics_tls else None,
    )


@contextmanager
def _serving(
    config: CoordinatorConfig,
    federation: Federation,
    identity: FederationIdentity,
    exported_config: str,
) -> Iterator[RunningCoordinator]:
    """The gRPC server on an event loop of its own thread; the run loop has another."""
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True)
    loop_thread.start()
    federation.registry.bind(loop)
    workers = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="coordinator")
    metrics_server = None
    try:
        server, port = asyncio.run_coroutine_threadsafe(
            _start_server(config, federation, identity, exported_config, workers), loop
        ).result()
        metrics_port = None
        if config.metrics_port is not None:
            metrics_server = _metrics_server(config, federation)
            metrics_port = metrics_server.server_port
        log.info("coordinator serving on port %d (metrics: %s)", port, metrics_port)
        try:
            yield RunningCoordinator(
                server=server,
                port=port,
                metrics_port=metrics_port,
                federation=federation,
                metrics_host=str(metrics_server.server_address[0]) if metrics_server else "",
            )
        finally:
            federation.registry.close()
            federation.shutdown()
            asyncio.run_coroutine_threadsafe(server.stop(grace=2.0), loop).result()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        workers.shutdown(wait=True, cancel_futures=True)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(10)
        loop.close()
