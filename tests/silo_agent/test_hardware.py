"""The hardware flags change how a round is computed, never the update: micro-batches and
loader workers give the one-batch delta, bf16/fp16 autocast stays close to fp32 with the
adapter in fp32, and the plan's local optimizer is the one that steps."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.demo.federation import prepare, processes, start_coordinator
from shared.adapter import initial_adapter, load_base_config
from shared.silo_data import Sample, read_split
from shared.tensor_codec import StateDict
from shared.tls import TlsFiles
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from silo_agent.__main__ import main
from silo_agent.client import Backoff, SiloAgent
from silo_agent.distributed import RoundTrainer
from silo_agent.hardware import HardwareError, TrainingHardware, grad_scaler
from silo_agent.model import SiloModel, load_silo_model
from silo_agent.regularizers import trainable_by_state_name
from silo_agent.replicas import SiloGroup, rank_device
from silo_agent.round_task import plan_of
from silo_agent.step_loader import micro_chunks
from silo_agent.trainer import LocalPlan, LocalResult, load_global_adapter, train_round
from tests.helpers import channel, run_to_end, small_run

# 12 samples in batches of 5, 5 and 2; SGD, so that the delta is linear in the gradients
PLAN = LocalPlan(
    learning_rate=0.1, local_epochs=1, batch_size=5, seed=3, proximal_mu=0.1, local_optimizer="sgd"
)


def silo_of(model: Path, precision: str = "auto") -> SiloModel:
    return load_silo_model(model, device="cpu", lora_dropout=0.0, precision=precision)


@pytest.fixture(scope="module")
def samples(silo_data: dict[str, Path]) -> list[Sample]:
    return read_split(silo_data["silo-1"])


@pytest.fixture(scope="module")
def start(tiny_model: Path) -> StateDict:
    return initial_adapter(load_base_config(tiny_model), seed=1)[1]


@pytest.fixture(scope="module")
def whole(tiny_model: Path, samples: list[Sample], start: StateDict) -> LocalResult:
    return train_round(silo_of(tiny_model), samples, PLAN, start)


def cosine(a: StateDict, b: StateDict) -> float:
    flat_a, flat_b = (torch.cat([d[n].flatten() for n in sorted(a)]) for d in (a, b))
    return float(torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0))


@pytest.mark.parametrize(
    "hardware",
    [TrainingHardware(micro_batch=2), TrainingHardware(micro_batch=1, loader_workers=2)],
    ids=["micro-batch-2", "micro-batch-1-two-workers"],
)
def test_micro_batches_and_loader_workers_send_the_whole_batch_update(
    tiny_model: Path,
    samples: list[Sample],
    start: StateDict,
    whole: LocalResult,
    hardware: TrainingHardware,
) -> None:
    split = train_round(silo_of(tiny_model), samples, PLAN, start, hardware=hardware)
    assert (split.steps, split.num_samples) == (whole.steps, whole.num_samples) == (3, 12)
    assert abs(split.mean_loss - whole.mean_loss) < 1e-5
    for name, delta in whole.delta.items():
        torch.testing.assert_close(split.delta[name], delta, rtol=1e-4, atol=1e-7)


def test_loader_workers_prepare_exactly_the_batches_of_the_training_process(
    tiny_model: Path, samples: list[Sample], start: StateDict, whole: LocalResult
) -> None:
    prefetched = train_round(
        silo_of(tiny_model), samples, PLAN, start, hardware=TrainingHardware(loader_workers=2)
    )
    assert prefetched.mean_loss == whole.mean_loss
    assert all(torch.equal(prefetched.delta[n], d) for n, d in whole.delta.items())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_computes_a_half_base_with_an_fp32_adapter(
    tiny_model: Path,
    samples: list[Sample],
    start: StateDict,
    whole: LocalResult,
    precision: str,
) -> None:
    silo = silo_of(tiny_model, precision=precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    frozen = {p.dtype for p in silo.model.parameters() if not p.requires_grad}
    assert frozen == {dtype} and silo.compute_dtype == dtype
    assert silo.adapter_layout == silo_of(tiny_model).adapter_layout  # what the silo joins with
    assert (grad_scaler(silo.device, dtype) is not None) == (precision == "fp16")
    result = train_round(silo, samples, PLAN, start)
    assert result.steps == 3 and abs(result.mean_loss - whole.mean_loss) < 1e-2
    assert all(d.dtype == torch.float32 for d in result.delta.values())
    assert cosine(result.delta, whole.delta) > 0.999


def test_a_four_bit_base_computes_in_the_precision_asked(
    tiny_llava: Path, silo_data: dict[str, Path]
) -> None:
    import bitsandbytes as bnb

    silo = load_silo_model(tiny_llava, device="cpu", quantize="4bit", precision="bf16")
    quantised = [m for m in silo.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and {m.compute_dtype for m in quantised} == {torch.bfloat16}
    _, state = initial_adapter(load_base_config(tiny_llava), seed=0)
    plan = LocalPlan(learning_rate=1e-3, local_epochs=1, batch_size=2, seed=0)
    result = train_round(silo, read_split(silo_data["silo-1"])[:4], plan, state)
    assert result.steps == 2 and all(torch.isfinite(d).all() for d in result.delta.values())


def one_step_gradient(silo: SiloModel, samples: list[Sample], start: StateDict) -> StateDict:
    """The clipped gradient of the whole batch's loss at the global adapter."""
    load_global_adapter(silo, start)
    silo.model.train()
    params = trainable_by_state_name(silo.model)
    silo.forward(silo.batch(samples)).loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=1.0)
    gradient = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    silo.model.zero_grad(set_to_none=True)
    return gradient


def test_the_local_optimizer_is_the_plans(
    tiny_model: Path, samples: list[Sample], start: StateDict
) -> None:
    silo = silo_of(tiny_model)
    gradient = one_step_gradient(silo, samples, start)
    plan = LocalPlan(learning_rate=0.5, local_epochs=1, batch_size=len(samples), seed=0)
    sgd = train_round(silo, samples, replace(plan, local_optimizer="sgd"), start)
    for name, step in gradient.items():  # plain SGD: no momentum, no weight decay
        torch.testing.assert_close(sgd.delta[name], -0.5 * step, rtol=1e-4, atol=1e-7)
    adamw = train_round(silo, samples, plan, start)  # "" is AdamW
    for name, step in gradient.items():  # Adam's first step: lr x sign of the gradient
        moved = step.abs() > 1e-5
        torch.testing.assert_close(
            adamw.delta[name][moved], -0.5 * step[moved].sign(), rtol=1e-3, atol=0
        )
    unknown = replace(plan, local_optimizer="lion")
    with pytest.raises(ValueError, match="round 2: unknown local optimizer 'lion'"):
        train_round(silo, samples, unknown, start, label="round 2")


def test_the_training_plan_carries_the_local_optimizer() -> None:
    assert plan_of(pb.TrainingPlan(local_optimizer="sgd")).local_optimizer == "sgd"
    assert plan_of(pb.TrainingPlan()).local_optimizer == ""


def test_every_rank_makes_the_same_number_of_passes() -> None:
    batch = [f"s{i}" for i in range(5)]
    rank0 = micro_chunks(batch, rank=0, world_size=2, micro=2)  # type: ignore[arg-type]
    rank1 = micro_chunks(batch, rank=1, world_size=2, micro=2)  # type: ignore[arg-type]
    assert rank0 == [(["s0", "s2"], True), (["s4"], True)]
    assert rank1 == [(["s1", "s3"], True), (["s0"], False)]  # a stand-in, weighing nothing
    assert micro_chunks(["s0"], rank=1, world_size=2, micro=0) == [(["s0"], False)]  # type: ignore[list-item]
    assert micro_chunks(batch, rank=0, world_size=1, micro=0) == [(batch, True)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard", "fsdp"], "--shard fsdp shards across processes: add --nproc-per-node N"),
        (
            ["--shard", "fsdp", "--nproc-per-node", "2", "--quantize", "4bit"],
            "--shard fsdp cannot shard 4-bit weights",
        ),
        (["--shard", "fsdp", "--nproc-per-node", "2"], "--shard fsdp trains only, and "),
        (["--eval-only", "--nproc-per-node", "2"], "--eval-only runs in one process"),
    ],
)
def test_flag_combinations_that_cannot_work_are_refused_in_one_line(
    silo_data: dict[str, Path], flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--data", str(silo_data["silo-1"]), "--coordinator", "localhost:1", "--model", "m"]
    tls = ["--cert", "c.pem", "--key", "c.key", "--ca", "ca.pem"]
    with pytest.raises(SystemExit) as exited:
        main([*common, *tls, *flags])
    assert exited.value.code == 2  # a usage error
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"silo-agent: {message}")


def test_each_process_under_torchrun_takes_the_gpu_of_its_local_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert rank_device("cuda") == "cuda"  # one process: as asked
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cuda") == "cuda:1"
    assert rank_device("cpu") == "cpu"
    with pytest.raises(HardwareError, match="--device cuda:0 names one GPU for every process"):
        rank_device("cuda:0")


def test_loader_workers_start_beside_a_live_grpc_session(tmp_path: Path) -> None:
    """Workers start while the agent's gRPC channel, task stream and heartbeat threads are live
    (the coordinator in its own process, as deployed); they come from a fork server, so none
    is a copy of those threads."""
    names = prepare(tmp_path, silos=1, family="idefics3", train=8, seed=4)
    logs = tmp_path / "logs"
    logs.mkdir()
    with processes() as running:
        coordinator, port, _ = start_coordinator(tmp_path, logs)
        running.append(coordinator)
        agent = SiloAgent(
            coordinator=f"localhost:{port}",
            tls=TlsFiles.in_directory(tmp_path / "certs", names[0]),
            silo=silo_of(tmp_path / "model"),
            samples=read_split(tmp_path / "data" / names[0]),
            backoff=Backoff(0.2, 1.0),
            train=RoundTrainer(hardware=TrainingHardware(loader_workers=2), group=SiloGroup()),
        )
        admin = pb_grpc.AdminStub(channel(port, TlsFiles.in_directory(tmp_path / "certs", "admin")))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            status = run_to_end(admin, small_run(rounds=2, silos_per_round=1, min_silos=1))
        finally:
            agent.stop()
            thread.join(10)
    assert status.state == pb.RUN_STATE_COMPLETED, status.message
    assert [list(r.contributed) for r in status.history] == [[names[0]], [names[0]]]
