"""Every server strategy against an independent NumPy re-derivation of its update rule."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.aggregation import native
from coordinator.aggregation.fold import AggregationRule, Arrival, RoundFold
from coordinator.aggregation.receiver import receive_bytes
from coordinator.checkpoint import CheckpointStore
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.run_state import RunRecord, RunSpec
from coordinator.strategies import CONTROL_PREFIX, RoundAggregate
from coordinator.strategies import kernels as strategy_kernels
from shared.tensor_codec import encode_state

SHAPES = {"l.0.lora_A.weight": (4, 6), "l.0.lora_B.weight": (6, 4), "l.1.lora_A.weight": (3,)}
COUNTS = [[5, 40, 13], [7, 2, 90], [33, 33, 1]]  # unequal samples per silo, 3 rounds
STEPS = [[2, 10, 4], [3, 1, 23], [9, 9, 1]]
PARAMS = {"eta": 0.05, "tau": 1e-3, "beta1": 0.9, "beta2": 0.99, "momentum": 0.8}


def numpy_rounds(
    name: str,
    x: dict[str, np.ndarray],
    deltas: list[list[dict[str, np.ndarray]]],
    controls: list[list[dict[str, np.ndarray]]],
    population: int,
) -> list[dict[str, np.ndarray]]:
    """The published update rules, written out in float64, one round after another."""
    eta, tau, b1, b2, mom = (PARAMS[k] for k in ("eta", "tau", "beta1", "beta2", "momentum"))
    x = {k: v.astype(np.float64) for k, v in x.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v2 = {k: np.full_like(v, tau**2) for k, v in x.items()}
    c = {k: np.zeros_like(v) for k, v in x.items()}
    history = []
    for r, round_deltas in enumerate(deltas):
        n, steps = np.array(COUNTS[r], float), np.array(STEPS[r], float)
        for k in x:
            if name == "fednova":
                p = n / n.sum()
                d = sum(p[i] * round_deltas[i][k] / steps[i] for i in range(3)) * (p @ steps)
            else:
                d = sum(n[i] * round_deltas[i][k] for i in range(3)) / n.sum()
            if name in ("fedavg", "fednova", "scaffold"):
                x[k] = x[k] + eta * d
            elif name == "fedavgm":
                m[k] = mom * m[k] + d
                x[k] = x[k] + eta * m[k]
            else:
                m[k] = b1 * m[k] + (1 - b1) * d
                if name == "fedadam":
                    v2[k] = b2 * v2[k] + (1 - b2) * d**2
                elif name == "fedyogi":
                    v2[k] = v2[k] - (1 - b2) * d**2 * np.sign(v2[k] - d**2)
                else:
                    v2[k] = v2[k] + d**2
                x[k] = x[k] + eta * m[k] / (np.sqrt(v2[k]) + tau)
            if name == "scaffold":
                c[k] = c[k] + sum(ctl[k] for ctl in controls[r]) / population
        history.append({**x, **{CONTROL_PREFIX + k: val.copy() for k, val in c.items()}})
    return history


def fold_round(
    model: GlobalModel,
    updates: list[dict[str, torch.Tensor]],
    counts: list[int],
    steps: list[int],
    directory: Path,
    *,
    population: int = 1,
) -> RoundAggregate:
    """Each update through the real receiver and the round's fold, as an upload would."""
    selected = [f"silo-{i}" for i in range(len(updates))]
    shape = model.update_shape("float32")
    fold = RoundFold(
        aggregate=model.begin_round(population=population),
        rule=AggregationRule(),
        selected=selected,
        shape=shape,
    )
    for silo, update, n, k in zip(selected, updates, counts, steps, strict=True):
        path = directory / f"{secrets.token_hex(4)}.bin"
        received = receive_bytes(encode_state(update), shape=shape, path=path)
        weight = model.strategy.update_weight(num_samples=n, steps=k)
        fold.add(silo, Arrival(update=received, weight=weight, num_samples=n, steps=k))
    fold.finish()
    fold.discard()
    return fold.aggregate


@pytest.mark.parametrize("reload_between_rounds", [False, True])
@pytest.mark.parametrize(
    "name", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova"]
)
def test_three_rounds_match_numpy(name: str, reload_between_rounds: bool, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    deltas = [
        [
            {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(3)
        ]
        for _ in range(3)
    ]
    controls = [
        [
            {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(3)
        ]
        for _ in range(3)
    ]
    population = 5
    expected = numpy_rounds(name, x0, deltas, controls, population)

    spec = RunSpec(strategy=name, **PARAMS)  # type: ignore[arg-type]
    flat = FlatLayout.of({k: torch.from_numpy(v) for k, v in x0.items()})
    model = GlobalModel.start(spec, flat, {k: torch.from_numpy(v) for k, v in x0.items()})
    store = CheckpointStore(tmp_path / "ckpt")
    run = RunRecord(run_id="run-test", spec=spec)
    for r in range(3):
        updates = []
        for i in range(3):
            update = {k: torch.from_numpy(v) for k, v in deltas[r][i].items()}
            if name == "scaffold":
                update |= {
                    CONTROL_PREFIX + k: torch.from_numpy(v) for k, v in controls[r][i].items()
                }
            updates.append(update)
        model.apply(
            fold_round(model, updates, COUNTS[r], STEPS[r], tmp_path, population=population)
        )
        if reload_between_rounds:
            store.save_round(run, r + 1, model.adapter(), model.strategy_state())
            saved = CheckpointStore(tmp_path / "ckpt").load_latest()
            assert saved is not None
            model = GlobalModel.restore(spec, flat, saved.adapter, saved.strategy_state)
        got = {**model.adapter(), **model.strategy.download_extras()}
        for key, want in expected[r].items():
            if key.startswith(CONTROL_PREFIX) and name != "scaffold":
                continue
            assert np.max(np.abs(got[key].double().numpy() - want)) <= 1e-6, (name, r, key)


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=4, max_size=4),
    counts=st.lists(st.integers(1, 10_000), min_size=1, max_size=6),
)
def test_fedavg_of_identical_updates_is_that_update(
    values: list[float], counts: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    update = {"w": torch.tensor(values, dtype=torch.float32).reshape(2, 2)}
    start = {"w": torch.zeros(2, 2)}
    model = GlobalModel.start(RunSpec(strategy="fedavg"), FlatLayout.of(start), start)
    directory = tmp_path_factory.mktemp("spool")
    model.apply(fold_round(model, [update] * len(counts), counts, [1] * len(counts), directory))
    torch.testing.assert_close(model.adapter()["w"], update["w"], rtol=1e-6, atol=1e-4)


def test_bf16_adapter_keeps_its_dtype_and_a_float32_master(tmp_path: Path) -> None:
    start = {"w": torch.ones(4, dtype=torch.bfloat16)}
    model = GlobalModel.start(RunSpec(strategy="fedavg"), FlatLayout.of(start), start)
    for _ in range(3):  # 1 + 3 * 1e-3 is not representable in bf16; the master keeps it
        delta = {"w": torch.full((4,), 1e-3)}
        model.apply(fold_round(model, [delta], [1], [1], tmp_path))
    assert model.adapter()["w"].dtype == torch.bfloat16
    assert "master" in model.strategy_state()
    torch.testing.assert_close(model.master, torch.full((4,), 1.003), rtol=0, atol=1e-6)


def test_unknown_strategy_is_refused() -> None:
    assert RunSpec(strategy="fedsgd").problems() == [
        "strategy must be one of fedavg, fedavgm, fedadam, fedyogi, fedadagrad, scaffold, "
        "fednova (got 'fedsgd')"
    ]


def test_fedadagrad_takes_no_server_momentum_unless_asked() -> None:
    """Reddi et al.'s reference code and Flower run FedAdagrad with beta1 = 0: m is the round's
    delta; FedAdam and FedYogi keep 0.9."""
    flat = FlatLayout.of({"w": torch.zeros(3)})
    start = {"w": torch.zeros(3)}
    for name, beta1 in (("fedadagrad", 0.0), ("fedadam", 0.9), ("fedyogi", 0.9)):
        model = GlobalModel.start(RunSpec(strategy=name), flat, start)
        assert model.strategy.params.beta1 == beta1, name
    explicit = GlobalModel.start(RunSpec(strategy="fedadagrad", beta1=0.5), flat, start)
    assert explicit.strategy.params.beta1 == 0.5


@pytest.mark.parametrize(
    "name", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova"]
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", [4321, 5006])
def test_a_step_that_leaves_a_non_finite_weight_is_refused(
    name: str, bad: float, where: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence behind the receiver's checks (an aggregate is never built
    from unchecked values; this one is, by hand): every step sums the new weights in its own
    pass (FedAvg's window by window: here windows of 1,000, the last one short), so one bad
    weight among many is caught wherever it is."""
    monkeypatch.setattr(strategy_kernels, "SUM_WINDOW", 1000)
    start = {"a": torch.zeros(5000), "b": torch.zeros(7)}
    model = GlobalModel.start(RunSpec(strategy=name), FlatLayout.of(start), start)
    aggregate = model.begin_round(population=2)
    aggregate.total.fill_(0.01)
    aggregate.total[where] = bad
    if aggregate.control_total is not None:
        aggregate.control_total.zero_()
    aggregate.weight_sum, aggregate.samples, aggregate.sample_steps = 1.0, 1, 1.0
    aggregate.updates, aggregate.stale = 1, set()
    with pytest.raises(FloatingPointError, match="non-finite"):
        model.apply(aggregate)
    good = model.begin_round(population=2)  # (the run loop restores the weights from the save)
    good.total.fill_(0.01)
    if good.control_total is not None:
        good.control_total.zero_()
    good.weight_sum, good.samples, good.sample_steps, good.updates = 1.0, 1, 1.0, 1
    fresh = GlobalModel.start(RunSpec(strategy=name), FlatLayout.of(start), start)
    fresh.apply(good)  # the same step on finite values passes
    assert bool(torch.isfinite(fresh.master).all())


@pytest.mark.parametrize(
    "name", ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold", "fednova"]
)
def test_every_step_measures_the_rounds_delta_in_its_own_pass(name: str) -> None:
    """The round's record carries the norm of its summed delta, which each step takes from
    its own pass, summed in float64: compiled or native, as exact as a float64 norm (ATen's
    windows, without the native loops: within a few parts per million)."""
    start = {"a": torch.zeros(2_000_000), "b": torch.zeros(7)}
    model = GlobalModel.start(RunSpec(strategy=name), FlatLayout.of(start), start)
    aggregate = model.begin_round(population=2)
    aggregate.total.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(1))
    if aggregate.control_total is not None:
        aggregate.control_total.zero_()
    aggregate.weight_sum, aggregate.samples, aggregate.sample_steps = 3.0, 3, 3.0
    aggregate.updates, aggregate.stale = 1, set()
    exact = float(torch.linalg.vector_norm(aggregate.total.double()))
    windowed = name in ("fedavg", "scaffold", "fednova") and native.library() is None
    assert model.apply(aggregate) == pytest.approx(exact, rel=1e-5 if windowed else 1e-9)


@pytest.mark.parametrize("window", [1000, 5007, 1 << 20])
@pytest.mark.usefixtures("no_native_loops")
def test_the_summing_add_moves_the_weights_as_add_does_and_sums_them(
    window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FedAvg's step without the native loops adds window by window, summing each window as
    it goes: the weights come out bit for bit as one `add_` leaves them, the sum is theirs,
    and the squares are the delta's."""
    monkeypatch.setattr(strategy_kernels, "SUM_WINDOW", window)
    generator = torch.Generator().manual_seed(3)
    x, total = torch.randn(5007, generator=generator), torch.randn(5007, generator=generator)
    expected = x.clone().add_(total, alpha=0.37)
    summed, squares = strategy_kernels.add_summed(x, total, 0.37)
    assert torch.equal(x, expected)
    assert float(summed) == pytest.approx(float(expected.double().sum()), abs=1e-3)
    assert float(squares) == pytest.approx(float(total.double().square().sum()), rel=1e-5)
    assert [float(s) for s in strategy_kernels.add_summed(torch.empty(0), torch.empty(0), 1.0)] == [
        0.0,
        0.0,
    ]
