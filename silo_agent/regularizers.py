"""Local regularisers: FedProx and the adaptive masked proximal term of FedMLLM.

    FedProx:   mu/2 * sum_l ||w_l - w~_l||^2                over every LoRA weight
    Adaptive:  gamma * sum_{l in mask} ||w~_l - w_l||^2     over the masked decoder layers

w~ is the global adapter received this round. The mask holds the decoder layers between the
first S and the last S (read from each LoRA weight's name, for any depth); gamma comes from the
silo's own data: 0 when every sample has every modality, gamma_max times the missing-slot rate
when some are missing, gamma_max when the silo holds a single modality.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from shared.silo_data import Sample
from shared.tensor_codec import StateDict

log = logging.getLogger(__name__)

_LAYER = re.compile(r"\.layers\.(\d+)\.")
_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.")


def decoder_layer(name: str) -> int | None:
    """The decoder-layer index in a LoRA weight's name, e.g. 5 for '...layers.5.self_attn...'."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def masked_layers(depth: int, skip: int) -> set[int]:
    """Decoder layers the adaptive term covers: all but the first and last `skip`."""
    if depth <= 2 * skip:
        log.warning(
            "the model has %d decoder layers, not more than 2 x %d skipped ones: the "
            "adaptive regulariser masks no layer",
            depth,
            skip,
        )
        return set()
    return set(range(skip, depth - skip))


def decoder_depth(model: PeftModel) -> int:
    base = model.get_base_model()
    assert isinstance(base, PreTrainedModel)
    decoder = base.get_decoder()
    # MiniCPM-V's decoder is a whole causal LM (`llm`), whose layers sit one level down
    layers = getattr(decoder, "layers", None) or getattr(
        getattr(decoder, "model", None), "layers", None
    )
    if layers is None:
        raise ValueError(f"cannot count the decoder layers of {type(decoder).__name__}")
    return len(layers)


def modality_gamma(samples: Sequence[Sample], gamma_max: float) -> float:
    """gamma for this silo's data (PAPER.md: adaptive masked proximal regulariser)."""
    count = len(samples)
    images = sum(s.has_image for s in samples)
    texts = sum(s.has_text for s in samples)
    if images == count and texts == count:
        return 0.0
    if images == 0 or texts == 0:
        return gamma_max
    return gamma_max * ((count - images) + (count - texts)) / (2 * count)


def trainable_by_state_name(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """LoRA parameters keyed as PEFT's adapter state dict names them (adapter name dropped)."""
    return {
        _ADAPTER_NAME.sub(r".\1.", name): p
        for name, p in model.named_parameters()
        if p.requires_grad
    }


class ProximalTerms:
    """The regularisation added to the local loss, anchored at this round's global adapter."""

    def __init__(
        self,
        params: dict[str, torch.nn.Parameter],
        anchor: StateDict,
        *,
        mu: float,
        gamma: float,
        mask: set[int],
    ) -> None:
        missing = anchor.keys() ^ params.keys()
        if missing:
            raise ValueError(f"adapter and model disagree on {sorted(missing)[0]}")
        self._pairs = [
            (p, anchor[n].to(p.device, p.dtype), decoder_layer(n) in mask)
            for n, p in params.items()
        ]
        self.mu, self.gamma = mu, gamma
        self.masked = sum(inside for _, _, inside in self._pairs)

    @property
    def active(self) -> bool:
        return self.mu > 0 or (self.gamma > 0 and self.masked > 0)

    def __call__(self) -> torch.Tensor:
        total = torch.zeros((), device=self._pairs[0][0].device)
        for param, anchor, inside in self._pairs:
            weight = self.mu / 2 + (self.gamma if inside else 0.0)
            if weight:
                total = total + weight * (param - anchor).pow(2).sum()
        return total
