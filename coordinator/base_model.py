"""The base model a run is pinned to: its config, its weights, and how its adapter started.

A run records them when it starts, so that a coordinator restarted with another model (or
another initial adapter) refuses to resume it and says what differs, and so that a silo whose
weights differ from the run's (same config.json, other weights) is refused at Join.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from coordinator.checkpoint import CheckpointStore, private_dir
from coordinator.registry import SiloRegistry
from coordinator.rounds import Refusal
from coordinator.run_state import RunRecord
from shared.adapter import describe_config_difference
from shared.pki.files import PRIVATE, write_atomic

log = logging.getLogger(__name__)

BASE_MODEL_FILE = "base-model.json"


class RunMismatch(RuntimeError):
    """The unfinished run on disk was started with another base model or initial adapter."""


@dataclass(frozen=True)
class BaseModel:
    """What this coordinator serves: the base model's canonical config and its fingerprint,
    and where runs' initial adapters come from."""

    canonical_config: dict[str, Any]
    fingerprint: str
    adapter_source: str = "fresh"  # "fresh" (seeded from the config) or the adapter's digest

    def pin(self, run: RunRecord, registry: SiloRegistry) -> RunRecord:
        """A new run pinned to this model, and to the weights the connected silos report (the
        first by name, when they disagree: the others are then passed over and told why)."""
        run.base_model_fingerprint = self.fingerprint
        reported = registry.weights_fingerprints()
        if reported:
            run.base_model_weights_fingerprint = reported[min(reported)]
        return run

    def save(self, run: RunRecord, store: CheckpointStore) -> None:
        directory = store.run_dir(run.run_id)
        private_dir(directory.parent)
        private_dir(directory)
        data = {"config": self.canonical_config, "adapter_source": self.adapter_source}
        write_atomic(directory / BASE_MODEL_FILE, json.dumps(data, indent=1).encode(), mode=PRIVATE)

    def differences(self, run: RunRecord, store: CheckpointStore) -> list[str]:
        """What differs between this coordinator and the one that started `run`."""
        try:
            saved = json.loads((store.run_dir(run.run_id) / BASE_MODEL_FILE).read_text())
        except (OSError, ValueError):
            saved = {}  # a run from before base models were recorded: the fingerprint decides
        problems = []
        if run.base_model_fingerprint and run.base_model_fingerprint != self.fingerprint:
            diff = describe_config_difference(saved.get("config", {}), self.canonical_config)
            problems.append("base model differs: " + ("; ".join(diff) or "fingerprint only"))
        source = saved.get("adapter_source", self.adapter_source)
        if source != self.adapter_source:
            problems.append(
                f"initial adapter differs: the run started from {source}, this coordinator "
                f"from {self.adapter_source}"
            )
        return problems


def check_weights(run: RunRecord | None, silo_id: str, reported: str) -> bool:
    """Whether the run must pin `reported` now (True); Refusal if it differs from the pin."""
    if run is None or not run.phase.active or not reported:
        return False
    pinned = run.base_model_weights_fingerprint
    if not pinned:
        return True
    if reported != pinned:
        raise Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"silo {silo_id!r}: base model weights differ from run {run.run_id}'s: weights "
            f"fingerprint {reported[:16]}..., the run's {pinned[:16]}...; every silo must load "
            "the same base weights",
        )
    return False
