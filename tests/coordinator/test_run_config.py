"""Run specs from a YAML config and flags, with errors that name the problem."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from coordinator.run_config import RunConfigError, add_flags, spec_from
from coordinator.run_state import RunSpec
from shared.wire.v1 import federation_pb2 as pb


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_yaml_keys_and_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("strategy: fedyogi\neta: 0.01\nbeta1: 0.8\nrounds: 25\ngamma-max: 0.1\n")
    spec = spec_from(_args("--config", str(config), "--rounds", "40", "--prompt", "improved"))
    assert spec == RunSpec(
        strategy="fedyogi", eta=0.01, beta1=0.8, rounds=40, gamma_max=0.1, prompt_variant="improved"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy: fedsgd\n", "strategy must be one of"),
        ("etaa: 1\n", "unknown key(s) etaa"),
        ("- a\n", "mapping"),
        ("beta1: 1.5\n", "beta1 and beta2 in [0, 1)"),
    ],
)
def test_bad_config_names_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(RunConfigError) as error:
        spec_from(_args("--config", str(config)))
    assert str(config) in str(error.value) and message in str(error.value)


def test_spec_round_trips_through_the_wire_with_unset_eta() -> None:
    spec = RunSpec(strategy="fedadam", tau=1e-4, beta1=0.0, mask_skip_layers=0)
    back = RunSpec.from_proto(spec.to_proto())
    assert back == spec and back.eta is None


def test_spec_from_an_older_client_takes_defaults() -> None:
    assert RunSpec.from_proto(
        pb.RunSpec(
            rounds=3,
            silos_per_round=2,
            min_silos=1,
            round_deadline_s=60,
            learning_rate=1e-4,
            local_epochs=1,
            batch_size=4,
        )
    ) == RunSpec(rounds=3, silos_per_round=2, min_silos=1, round_deadline_s=60, learning_rate=1e-4)
