"""Whether a joining silo can take part: same base model, same LoRA, same adapter layout.

Everything in a JoinRequest is untrusted: its JSON documents are parsed with size and depth
bounds, and what a refusal echoes of them is cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.adapter import describe_config_difference, lora_identity
from shared.bounded import UntrustedInput, bounded_json, printable
from shared.tensor_codec import AdapterLayout, TensorLayout, describe_layout_difference
from shared.wire.v1 import federation_pb2 as pb

# A model config is a few kB; a LoRA config one. Far above either, far below harm.
MAX_CONFIG_JSON_BYTES = 1 << 20
# The adapter of a 72B model with LoRA on every projection has a few thousand tensors.
MAX_LAYOUT_TENSORS = 100_000


@dataclass(frozen=True)
class FederationIdentity:
    """What every silo must share with the coordinator: base model and LoRA configuration."""

    canonical_config: dict[str, Any]
    fingerprint: str
    lora: dict[str, Any]


def _config_problems(request: pb.JoinRequest, identity: FederationIdentity) -> list[str]:
    if request.base_model_fingerprint == identity.fingerprint:
        return []
    theirs = bounded_json(
        request.base_model_config_json,
        what="base model config",
        max_bytes=MAX_CONFIG_JSON_BYTES,
    )
    if not isinstance(theirs, dict):
        return ["base model config is not a JSON object"]
    diff = describe_config_difference(identity.canonical_config, theirs)
    return ["base model differs: " + ("; ".join(diff) or "fingerprint only")]


def _lora_problems(request: pb.JoinRequest, identity: FederationIdentity) -> list[str]:
    parsed = bounded_json(
        request.lora_config_json, what="LoRA config", max_bytes=MAX_CONFIG_JSON_BYTES
    )
    if not isinstance(parsed, dict):
        return ["LoRA config is not a JSON object"]
    try:
        lora = lora_identity(parsed)
    except TypeError:
        return ["LoRA config target_modules is not a list of names"]
    keys = [k for k in identity.lora if lora.get(k) != identity.lora[k]]
    return [f"LoRA {k}: {lora.get(k)!r:.80}, expected {identity.lora[k]!r}" for k in keys]


def join_problems(
    request: pb.JoinRequest, *, identity: FederationIdentity, layout: AdapterLayout
) -> list[str]:
    """Why this silo cannot join (an empty list when it can)."""
    try:
        problems = _config_problems(request, identity) or _lora_problems(request, identity)
    except UntrustedInput as exc:
        return [str(exc)]
    if problems:
        return problems
    if len(request.adapter_layout) > MAX_LAYOUT_TENSORS:
        return [f"adapter layout of {len(request.adapter_layout)} tensors is implausible"]
    theirs = {
        t.name: TensorLayout(name=t.name, shape=tuple(t.shape), dtype=t.dtype)
        for t in request.adapter_layout
    }
    diff = describe_layout_difference(layout, theirs)
    return ["adapter layout differs: " + printable("; ".join(diff), limit=400)] if diff else []
