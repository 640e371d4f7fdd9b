"""The adaptive masked proximal regulariser, FedProx and SCAFFOLD's control variates."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bench.data.synthetic_data import tokenizer_corpus
from bench.demo.tiny_model import build_tiny_model
from shared.silo_data import Sample
from silo_agent.control_variates import ControlVariates
from silo_agent.model import load_silo_model
from silo_agent.regularizers import (
    ProximalTerms,
    decoder_depth,
    decoder_layer,
    masked_layers,
    modality_gamma,
    trainable_by_state_name,
)


@pytest.fixture(scope="module")
def twelve_layer_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("deep"), family="llava", corpus=tokenizer_corpus(), num_layers=12
    )


def test_mask_of_a_twelve_layer_model_skips_four_at_each_end(twelve_layer_model: Path) -> None:
    silo = load_silo_model(twelve_layer_model, device="cpu")
    names = list(trainable_by_state_name(silo.model))
    assert decoder_depth(silo.model) == 12
    assert {decoder_layer(n) for n in names} == set(range(12))
    mask = masked_layers(decoder_depth(silo.model), skip=4)
    assert mask == {4, 5, 6, 7}
    masked = [n for n in names if decoder_layer(n) in mask]
    assert len(masked) == len(names) // 3  # 4 of 12 layers, every projection's A and B


def test_two_layer_model_masks_nothing_and_warns(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    silo = load_silo_model(tiny_model, device="cpu")
    with caplog.at_level(logging.WARNING):
        assert masked_layers(decoder_depth(silo.model), skip=4) == set()
    assert "masks no layer" in caplog.text
    assert masked_layers(decoder_depth(silo.model), skip=0) == {0, 1}


def _samples(*modalities: str) -> list[Sample]:
    return [
        Sample(
            id=str(i),
            image=Path("x.png") if "i" in m else None,
            prompt="p",
            answer="a",
            has_text="t" in m,
        )
        for i, m in enumerate(modalities)
    ]


@pytest.mark.parametrize(
    ("modalities", "gamma"),
    [
        (("it", "it", "it", "it"), 0.0),  # aligned: nothing missing
        (("it", "i", "t", "it"), 0.1 * 2 / 8),  # missing: 2 of 8 modality slots
        (("i", "it", "it", "it"), 0.1 * 1 / 8),
        (("i", "i", "i"), 0.1),  # image-only silo
        (("t", "t"), 0.1),  # text-only silo
    ],
)
def test_gamma_from_the_silos_modalities(modalities: tuple[str, ...], gamma: float) -> None:
    assert modality_gamma(_samples(*modalities), gamma_max=0.1) == pytest.approx(gamma)


def test_proximal_terms_value() -> None:
    names = [
        "m.layers.0.q.lora_A.weight",
        "m.layers.1.q.lora_A.weight",
        "m.layers.2.q.lora_A.weight",
    ]
    params = {n: torch.nn.Parameter(torch.full((2,), float(i + 1))) for i, n in enumerate(names)}
    anchor = {n: torch.zeros(2) for n in names}
    # ||w - w~||^2 per layer: 2, 8, 18
    prox = ProximalTerms(params, anchor, mu=0.5, gamma=0.0, mask=set())
    assert float(prox().detach()) == pytest.approx(0.25 * (2 + 8 + 18))
    adaptive = ProximalTerms(params, anchor, mu=0.0, gamma=0.1, mask={1})
    assert adaptive.masked == 1 and float(adaptive().detach()) == pytest.approx(0.1 * 8)
    off = ProximalTerms(params, anchor, mu=0.0, gamma=0.1, mask=set())
    assert not off.active


def test_scaffold_control_variate_option_two() -> None:
    controls = ControlVariates()
    controls.use_run("run-a")
    server = {"w": torch.tensor([0.5, -1.0])}
    delta = {"w": torch.tensor([0.2, 0.4])}
    assert torch.equal(controls.correction(server)["w"], server["w"])  # c_k starts at 0
    change = controls.proposal(server, delta, steps=4, lr=0.1)
    expected = -server["w"] - delta["w"] / (4 * 0.1)
    torch.testing.assert_close(change["w"], expected)
    assert controls.local == {}  # nothing moves before a saved round took the update
    controls.propose("task-1", change)
    controls.confirm("")  # the next task: no saved round has taken it yet
    assert controls.local == {}
    controls.propose("task-1", change)
    controls.confirm("task-1")  # a saved round aggregated task-1's update
    torch.testing.assert_close(controls.local["w"], expected)
    torch.testing.assert_close(controls.correction(server)["w"], server["w"] - expected)
    controls.use_run("run-a")
    assert "w" in controls.local
    controls.use_run("run-b")  # a new run's server variate starts at 0, and so does c_k
    assert controls.local == {}


def test_a_scaffold_proposal_that_no_saved_round_took_is_dropped() -> None:
    """Abandoned attempts, redone rounds and rounds lost to a coordinator crash never reach
    c, so their proposals never reach c_k: only the confirmed one does."""
    controls = ControlVariates()
    controls.use_run("run-a")
    controls.propose("r2-attempt0", {"w": torch.tensor([5.0])})  # accepted, then abandoned
    controls.confirm("r1")  # the next task confirms only round 1's update (not this silo's)
    controls.propose("r2-attempt1", {"w": torch.tensor([1.0])})
    controls.confirm("r2-attempt1")
    torch.testing.assert_close(controls.local["w"], torch.tensor([1.0]))
    controls.confirm("r2-attempt0")  # too late: dropped when the first confirmation came
    torch.testing.assert_close(controls.local["w"], torch.tensor([1.0]))
