"""Run specs from a YAML config and flags: the flags' names as keys, every value checked
against its option's type and range, errors that name the file and the problem."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from coordinator.run_config import RunConfigError, add_flags, spec_from
from coordinator.run_schema import OPTIONS
from coordinator.run_state import RunSpec
from shared.cli import Parser
from shared.wire.v1 import federation_pb2 as pb

DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def _args(*argv: str) -> argparse.Namespace:
    parser = Parser(prog="start-run")
    add_flags(parser)
    return parser.parse_args(list(argv))


def _spec_of(tmp_path: Path, text: str, *argv: str) -> RunSpec:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    return spec_from(_args("--config", str(config), *argv))


def test_every_run_option_is_a_flag_and_a_key() -> None:
    assert {o.field for o in OPTIONS} == {f.name for f in fields(RunSpec)}
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)


def test_keys_are_the_flag_names_or_the_field_names_and_flags_win(tmp_path: Path) -> None:
    text = (
        "strategy: fedyogi\neta: 0.01\nbeta1: 0.8\nrounds: 25\ngamma-max: 0.1\nlr: 1e-3\n"
        "deadline: 900\nmu: 0.01\nsilos-per-round: 3\nmin_silos: 2\nwait-timeout: 60\n"
        "local_optimizer: sgd\n"
    )
    spec = _spec_of(tmp_path, text, "--rounds", "40", "--prompt", "improved")
    assert spec == RunSpec(
        strategy="fedyogi",
        eta=0.01,
        beta1=0.8,
        rounds=40,
        gamma_max=0.1,
        learning_rate=1e-3,  # PyYAML reads `1e-3` as a string; the option reads it as a number
        round_deadline_s=900.0,
        proximal_mu=0.01,
        silos_per_round=3,
        min_silos=2,
        wait_timeout_s=60.0,
        local_optimizer="sgd",
        prompt_variant="improved",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy: fedsgd\n", "strategy must be one of fedavg,"),
        ("etaa: 1\n", "unknown key 'etaa'; known keys: rounds,"),
        ("- a\n", "a mapping of option: value"),
        ("beta1: 1.5\n", "beta1 must be a finite number >= 0 and < 1 (got 1.5)"),
        ("rounds: three\n", "rounds must be an integer (got 'three')"),
        ("rounds: 99999999999\n", "rounds must be >= 1 and <= 100000"),
        ("rounds: yes\n", "rounds must be an integer (got True)"),
        ("learning_rate: fast\n", "learning_rate (--lr) must be a number (got 'fast')"),
        ("mu: .nan\n", "proximal_mu (--mu) must be a finite number"),
        ("seed: 1e15\n", "seed must be an integer (got '1e15')"),
        ("seed: 1000000000000000\n", "seed must be >= 0 and <= 4294967295"),
        ("lr: 0.1\nlearning_rate: 0.2\n", "learning_rate is given twice"),
        ("rounds: [1\n", "not YAML"),
        ("silos-per-round: 2\nmin-silos: 3\n", "min_silos must not exceed silos_per_round"),
    ],
)
def test_bad_config_names_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RunConfigError) as error:
        _spec_of(tmp_path, text)
    assert str(tmp_path / "run.yaml") in str(error.value) and message in str(error.value)
    assert error.value.code == 2 and "\n" not in str(error.value)


def test_an_unreadable_config_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(RunConfigError) as error:
        spec_from(_args("--config", str(tmp_path / "absent.yaml")))
    assert error.value.code == 4 and "absent.yaml: cannot read run config" in str(error.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "99999999999"], "argument --rounds: rounds must be >= 1 and <= 100000"),
        (["--mu", "nan"], "argument --mu: proximal_mu (--mu) must be a finite number >= 0"),
        (["--seed", "1e15"], "argument --seed: seed must be an integer (got '1e15')"),
        (["--lr", "-1"], "argument --lr: learning_rate (--lr) must be a finite number > 0"),
        (["--strategy", "fedsgd"], "argument --strategy: invalid choice: 'fedsgd'"),
    ],
)
def test_bad_flags_are_usage_errors_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        _args(*argv)
    said = capsys.readouterr().err
    assert ended.value.code == 2 and message in said and said.count("\n") == 1


def test_the_coordinator_refuses_what_the_flags_refuse() -> None:
    """An older or hand-made client may send any value; the same table decides."""
    assert RunSpec(proximal_mu=float("nan")).problems() == [
        "proximal_mu (--mu) must be a finite number >= 0 and <= 1000000 (got nan)"
    ]
    assert RunSpec(seed=10**15).problems() == [
        "seed must be >= 0 and <= 4294967295 (got 1000000000000000)"
    ]
    assert RunSpec().problems() == []


@pytest.mark.parametrize("example", sorted(DEPLOY_CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_examples_are_valid_run_configs(example: Path) -> None:
    spec = spec_from(_args("--config", str(example)))
    assert spec.problems() == []


def test_there_are_examples() -> None:
    assert len(list(DEPLOY_CONFIG.glob("*.yaml"))) >= 2


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


def test_the_wire_dtype_takes_its_short_names_in_flags_and_files(tmp_path: Path) -> None:
    assert spec_from(_args("--wire-dtype", "fp32")).wire_dtype == "float32"
    assert _spec_of(tmp_path, "wire-dtype: fp16\n").wire_dtype == "float16"
    assert _spec_of(tmp_path, "wire-dtype: bfloat16\n").wire_dtype == "bfloat16"
    assert spec_from(_args()).wire_dtype == "bfloat16"
    assert spec_from(_args("--wire-dtype", "int8")).wire_dtype == "int8"
    with pytest.raises(
        RunConfigError,
        match=r"run\.yaml: wire_dtype must be one of float32, bfloat16, float16, int8",
    ):
        _spec_of(tmp_path, "wire-dtype: int4\n")
