"""A model that ships its own code (MiniCPM-V 2.6's layout) federated end to end: its initial
adapter from `silo-agent init-adapter`, a real coordinator started from it (running no model
code), two silo agents loading the model with --trust-remote-code, real gRPC over mutual TLS."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from bench.data.synthetic_data import tokenizer_corpus
from coordinator.checkpoint import CheckpointStore
from coordinator.server import serve
from shared.adapter import RemoteCodeRequired, load_adapter_directory
from shared.silo_data import read_split
from shared.tensor_codec import layout_of
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.__main__ import main
from silo_agent.client import Backoff, SiloAgent
from silo_agent.hardware import TrainingHardware
from silo_agent.model import load_silo_model
from silo_agent.predict import main as predict
from silo_agent.trainer import LocalPlan, train_round
from tests.conftest import SILOS, coordinator_config, tls
from tests.helpers import agents_running, channel, run_to_end, small_run
from tests.silo_agent.remote_code_model import write_remote_code_model

# MiniCPM-V 2.6's language model, Qwen2-7B
QWEN2_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 151666,
}


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_remote_code_model(
        tmp_path_factory.mktemp("remote") / "minicpmv", corpus=tokenizer_corpus(), seed=0
    )


def exit_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as ended:
        code = int(ended.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_loading_it_needs_the_flag_and_says_so(
    remote_model: Path, silo_data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, message = exit_message(
        ["check", "--data", str(silo_data["silo-1"]), "--model", str(remote_model)], capsys
    )
    assert code == 4 and "--trust-remote-code" in message and "minicpmv" in message
    code, message = exit_message(
        ["init-adapter", "--model", str(remote_model), "--out", "unused"], capsys
    )
    assert code == 4 and "--trust-remote-code" in message


def test_coordinator_without_an_adapter_points_to_init_adapter(
    remote_model: Path, certs: Path, tmp_path: Path
) -> None:
    with (
        pytest.raises(RemoteCodeRequired, match="silo-agent init-adapter"),
        serve(coordinator_config(certs, remote_model, tmp_path / "ckpt")),
    ):
        pass


def test_check_trains_every_mix_with_the_models_own_code(
    remote_model: Path, mixed_silo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = exit_message(
        ["check", "--data", str(mixed_silo), "--model", str(remote_model), "--trust-remote-code"],
        capsys,
    )
    assert code == 0, output
    assert "minicpmv, adapter of 16 LoRA tensors" in output
    for mix in ("image+text", "image only", "text only", "mixed"):
        assert f"training step, {mix} batch" in output


def test_remote_code_model_federates_end_to_end(
    remote_model: Path,
    certs: Path,
    silo_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    adapter = tmp_path / "adapter"
    main(
        ["init-adapter", "--model", str(remote_model), "--trust-remote-code", "--out", str(adapter)]
    )
    lora, initial = load_adapter_directory(adapter)
    config = replace(
        coordinator_config(certs, remote_model, tmp_path / "ckpt"), adapter_dir=adapter
    )
    with serve(config) as running:
        silos = [load_silo_model(remote_model, device="cpu", trust_remote_code=True) for _ in SILOS]
        assert all(layout_of(initial) == s.adapter_layout for s in silos)
        agents = [
            SiloAgent(
                coordinator=f"localhost:{running.port}",
                tls=tls(certs, name),
                silo=silo,
                samples=read_split(silo_data[name]),
                backoff=Backoff(0.2, 1.0),
            )
            for name, silo in zip(SILOS, silos, strict=True)
        ]
        with agents_running(agents, running.federation.registry):
            admin = pb_grpc.AdminStub(channel(running.port, tls(certs, "admin")))
            status = run_to_end(admin, small_run())
    assert status.state == pb.RUN_STATE_COMPLETED, status.message
    assert [list(r.contributed) for r in status.history] == [SILOS, SILOS]
    latest = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert latest is not None and latest.round == 2
    assert any(not torch.equal(initial[k], latest.adapter[k]) for k in initial)
    assert lora.r == 8 and lora.lora_alpha == 8


def test_the_papers_adapter_weighs_5_046_272_parameters(
    remote_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """init-adapter on MiniCPM-V 2.6's dimensions (module tree on the meta device)."""
    paper = tmp_path / "minicpmv-2_6"
    shutil.copytree(remote_model, paper, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((paper / "config.json").read_text())
    del config["layer_types"]  # the tiny model's, one per layer
    (paper / "config.json").write_text(json.dumps({**config, **QWEN2_7B}))
    adapter = tmp_path / "paper-adapter"
    main(["init-adapter", "--model", str(paper), "--trust-remote-code", "--out", str(adapter)])
    assert "5,046,272 parameters (20.2 MB)" in capsys.readouterr().out
    state = load_file(str(adapter / "adapter_model.safetensors"))
    assert len(state) == 28 * 4 * 2
    assert sum(t.numel() for t in state.values()) == 28 * 8 * (2 * (3584 + 3584) + 2 * (3584 + 512))


def test_predictions_of_an_adapter_for_a_remote_code_model(
    remote_model: Path,
    silo_data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    adapter = tmp_path / "adapter"
    main(
        ["init-adapter", "--model", str(remote_model), "--trust-remote-code", "--out", str(adapter)]
    )
    capsys.readouterr()
    data = str(silo_data["silo-1"])
    model = str(remote_model)
    predict(["--model", model, "--adapter", str(adapter), "--data", data, "--trust-remote-code"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all(r["task"] == "hateful_memes" for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_loader_workers_prepare_batches_with_the_models_own_code(
    remote_model: Path, silo_data: dict[str, Path]
) -> None:
    """Workers come from a fork server: the model's own processor reaches them pickled."""
    silo = load_silo_model(remote_model, device="cpu", trust_remote_code=True, lora_dropout=0.0)
    samples = read_split(silo_data[SILOS[0]])[:6]
    plan = LocalPlan(1e-2, 1, 3, 0, local_optimizer="sgd")
    start = {n: t.detach().clone() for n, t in get_peft_model_state_dict(silo.model).items()}
    alone = train_round(silo, samples, plan, start)
    workers = train_round(silo, samples, plan, start, hardware=TrainingHardware(loader_workers=2))
    assert workers.steps == alone.steps == 2
    for name, delta in alone.delta.items():
        torch.testing.assert_close(workers.delta[name], delta)
