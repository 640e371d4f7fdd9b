"""The native float32 fold loops: built once per machine with its C compiler, used only where
they add exactly as ATen's `add_` does, and replaced by ATen's ops (with a warning naming why)
where they cannot be built or do not."""

from __future__ import annotations

import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from coordinator.aggregation import kernels, native, native_build
from coordinator.aggregation.measure import UpdateStatistics
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from coordinator.strategies import kernels as strategy_kernels
from shared.payload import BLOCK_ELEMENTS
from shared.safetensors_stream import StateEncoder

HAS_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


def _values(count: int, seed: int) -> torch.Tensor:
    """Values over many magnitudes, with zeros of both signs."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(count, generator=generator)
    raw *= torch.exp2(torch.randint(-20, 4, (count,), generator=generator).float())
    raw[::97] = 0.0
    raw[::89] = -0.0
    return raw


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "fedmllm"


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
def test_the_loops_are_built_once_and_then_loaded_from_the_cache(fresh_cache: Path) -> None:
    assert native._load() is not None
    (built,) = fresh_cache.glob("native-*.so")
    stamp = built.stat().st_mtime_ns
    assert native._load() is not None
    assert list(fresh_cache.glob("native-*")) == [built]  # nothing left over from the build
    assert built.stat().st_mtime_ns == stamp
    assert native.library() is not None


@pytest.mark.parametrize("size", [BLOCK_ELEMENTS, 4_099, 64, 1])
@pytest.mark.parametrize("alpha", [0.37, 1.0, 1 / 3, -2.5])
@pytest.mark.parametrize("write", [False, True])
def test_the_fused_add_equals_aten_bit_for_bit_with_the_same_norms(
    size: int, alpha: float, write: bool
) -> None:
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    values = _values(3 * size, seed=size)
    start = _values(3 * size, seed=size + 1)
    expected = torch.mul(values, alpha) if write else start.clone().add_(values, alpha=alpha)
    got = start.clone()
    norms = native.add_measured(got, values, alpha, write=write, size=size)
    assert norms is not None
    assert torch.equal(got, expected)
    # the measuring pass alone gives the same bits, and they are the blocks' norms
    alone = native.block_norms(values, 3)
    assert alone is not None and torch.equal(alone, norms)
    exact = torch.linalg.vector_norm(values.double().view(3, size), dim=1).float()
    assert torch.allclose(norms, exact, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("size", [BLOCK_ELEMENTS, 4_099, 1])
@pytest.mark.parametrize("alpha", [0.37, 1 / 3, -2.5])
@pytest.mark.parametrize("write", [False, True])
def test_bfloat16_values_are_added_as_the_compiled_widening_kernels_add_them(
    size: int, alpha: float, write: bool
) -> None:
    """The native loop widens and adds bfloat16 values with the compiled kernels' two roundings
    (a stretch that is not a whole block is added by those), and measures them as it measures
    float32 ones: the norms of the widened values."""
    if native.library() is None or not kernels.native_bfloat16():
        pytest.skip("the native loops do not add bfloat16 values on this machine")
    values = _values(3 * size, seed=size).to(torch.bfloat16)
    start = _values(3 * size, seed=size + 1)
    expected = start.clone()
    kernel = kernels.write_widened if write else kernels.add_widened
    kernels.fused(kernel)(expected, values, kernels.hyper(alpha))
    got = start.clone()
    norms = native.add_measured(got, values, alpha, write=write, size=size)
    assert norms is not None
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # zeros' signs too
    alone = native.block_norms(values, 3)
    assert alone is not None and torch.equal(alone, norms)
    widened = native.block_norms(values.float(), 3)
    assert widened is not None and torch.equal(widened, norms)  # the same values, the same bits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_block_adds_and_measures_the_same_on_any_number_of_threads(dtype: str) -> None:
    """Blocks are taken by whichever thread is ready (the caller's from the last one down,
    the others' from the first one up): each is added and measured whole, every one once."""
    lib = native.library()
    if lib is None:
        pytest.skip("the native loops are not built on this machine")
    values = _values(7 * BLOCK_ELEMENTS, seed=5).to(getattr(torch, dtype))
    start = _values(7 * BLOCK_ELEMENTS, seed=6)
    widened = int(dtype == "bfloat16")
    results = []
    for threads in (1, 2, 3, 8):
        norms, measured, total = torch.empty(7), torch.empty(7), start.clone()
        lib.block_norms(values.data_ptr(), 7, BLOCK_ELEMENTS, norms.data_ptr(), threads, widened)
        lib.add_measured(
            total.data_ptr(), values.data_ptr(), 0.37, 0, 7, BLOCK_ELEMENTS,
            measured.data_ptr(), threads, widened, None, 0, None, 0, None, None, None,
        )  # fmt: skip
        assert torch.equal(norms, measured)
        results.append((norms, total))
    for norms, total in results:
        assert torch.equal(norms, results[0][0]) and torch.equal(total, results[0][1])
    expected = start.clone()
    kernels.add_scaled(expected, values, 0.37, write=False)  # each value added once
    assert torch.equal(results[0][1], expected)


def test_loops_run_at_once_share_the_cores_and_keep_their_bits() -> None:
    """Uploads are received on several threads at once: one chunk's loop at a time runs on
    all of torch's threads, any other beside it on its own thread, with the same bits."""
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    values, start = _values(9 * BLOCK_ELEMENTS, seed=11), _values(9 * BLOCK_ELEMENTS, seed=12)
    alone = native.block_norms(values, 9)
    added = start.clone()
    added_norms = native.add_measured(added, values, 0.37, write=False, size=BLOCK_ELEMENTS)
    assert alone is not None and added_norms is not None and torch.equal(alone, added_norms)
    held = native._take_team()
    try:
        assert held == torch.get_num_threads()
        beside = native._take_team()
        assert beside == 0  # the calling thread alone
        native._give_team(beside)
        total = start.clone()
        assert torch.equal(native.block_norms(values, 9), alone)
        norms = native.add_measured(total, values, 0.37, write=False, size=BLOCK_ELEMENTS)
        assert norms is not None and torch.equal(norms, alone) and torch.equal(total, added)
    finally:
        native._give_team(held)
    again = native._take_team()  # let go once the loop is done
    native._give_team(again)
    assert again == torch.get_num_threads()

    def measured(_: int) -> bool:
        total = start.clone()
        norms = native.add_measured(total, values, 0.37, write=False, size=BLOCK_ELEMENTS)
        return bool(
            torch.equal(native.block_norms(values, 9), alone)
            and norms is not None
            and torch.equal(norms, alone)
            and torch.equal(total, added)
        )

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(measured, range(24)))


def test_the_non_finite_show_in_the_norms_and_in_the_weight_sum() -> None:
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    for bad in (float("nan"), float("inf"), -float("inf")):
        values = _values(2 * 4096, seed=9)
        values[5000] = bad
        norms = native.block_norms(values, 2)
        assert norms is not None and bool(torch.isfinite(norms[0]))
        assert not bool(torch.isfinite(norms[1]))
        weights = torch.zeros(2 * 4096)
        summed = native.add_summed(weights, values, 0.5)
        assert summed is not None and not math.isfinite(summed[0])
        assert not math.isfinite(summed[1])


def test_the_summing_step_moves_the_weights_as_add_does() -> None:
    x, total = _values(100_003, seed=1), _values(100_003, seed=2)
    expected = x.clone().add_(total, alpha=0.37)
    summed, squares = strategy_kernels.add_summed(x, total, 0.37)
    assert torch.equal(x, expected)
    assert float(summed) == pytest.approx(float(expected.double().sum()), rel=1e-6, abs=1e-6)
    assert float(squares) == pytest.approx(float(total.double().square().sum()), rel=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_an_update_measures_the_same_bits_folded_live_or_alone(dtype: str) -> None:
    """The norm of an update decides its clipping: measured alone (it arrived early) or in
    its live fold's pass, it must be the same."""
    if native.library() is None or (dtype == "bfloat16" and not kernels.native_bfloat16()):
        pytest.skip("without the native loops an update is measured one way or the other")
    shapes = {"a.lora_A.weight": (8, 9_000), "b.lora_B.weight": (37_000, 2)}
    layout = FlatLayout.of({k: torch.zeros(s) for k, s in shapes.items()})
    generator = torch.Generator().manual_seed(4)
    state = {k: torch.randn(s, generator=generator) for k, s in shapes.items()}
    encoder = StateEncoder(state, dtype=getattr(torch, dtype))
    data = encoder.data(0, encoder.numel)
    shape = UpdateShape(layout=layout, dtype=dtype)

    class Live:
        def __init__(self) -> None:
            self.total = torch.zeros(shape.numel)
            self.fused = 0  # blocks added and measured in one pass

        def add(self, element: int, values: torch.Tensor) -> None:
            target = self.total[element : element + values.numel()]
            kernels.add_scaled(target, values, 1.0, write=False)

        def add_measuring(self, element: int, values: torch.Tensor) -> torch.Tensor | None:
            target = self.total[element : element + values.numel()]
            self.fused += values.numel() // BLOCK_ELEMENTS
            return kernels.add_measured(target, values, 1.0, write=False)

    live, alone = Live(), UpdateStatistics(shape)
    measured_live = UpdateStatistics(shape, sink=live)
    for statistics in (alone, measured_live):
        statistics.consume(memoryview(data))
    assert live.fused == shape.numel // BLOCK_ELEMENTS  # every whole block in the fold's pass
    assert measured_live.norm == alone.norm
    sent = torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype))
    assert torch.equal(live.total, sent.float())


def test_without_a_compiler_aten_serves_and_says_why(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(fresh_cache / "no-such-compiler"))
    with caplog.at_level(logging.WARNING):
        assert native._load() is None
    assert "native fold loops unavailable" in caplog.text
    assert "no-such-compiler" in caplog.text  # the cause, and the fix
    assert "install a C compiler (gcc) or set CC" in caplog.text
    values, x = _values(3 * BLOCK_ELEMENTS, seed=3), _values(3 * BLOCK_ELEMENTS, seed=4)
    with native.unavailable():  # as a process without one runs
        assert native.block_norms(values, 3) is None
        total = x.clone()
        norms = kernels.add_measured(total, values, 0.25, write=False)
        assert torch.equal(total, x.clone().add_(values, alpha=0.25))
        assert torch.allclose(norms, torch.linalg.vector_norm(values.view(3, -1), dim=1))
        # a live fold is offered float32 values only once they are checked, as ATen measures
        # them
        shape = UpdateShape(layout=FlatLayout.of({"w": x}), dtype="float32")
        assert UpdateStatistics(shape)._fusable is False
    assert native.library() is None or native.block_norms(values, 3) is not None  # restored


def test_fedmllm_compile_0_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMLLM_COMPILE", "0")
    assert native._load() is None


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine")
@pytest.mark.parametrize(
    ("fused", "twice", "why"),
    [
        ("fmaf(alpha, v, sum)", "(alpha * v) + sum", "its additions differ"),
        ("fmaf(a, v[i], s[i])", "(a * v[i]) + s[i]", "its additions from spooled files differ"),
    ],
)
def test_loops_that_would_not_add_as_aten_does_are_not_used(
    fused: str,
    twice: str,
    why: str,
    fresh_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Built from a source that rounds twice (a product, then a sum), as a compiler or a
    machine without fused multiply-add might: the check at load refuses it."""
    text = native_build.SOURCES[0].read_text()
    assert fused in text
    source = tmp_path / "native.c"
    source.write_text(text.replace(fused, twice))
    monkeypatch.setattr(native_build, "SOURCES", (source, *native_build.SOURCES[1:]))
    with caplog.at_level(logging.WARNING):
        assert native._load() is None
    assert f"not used: {why}" in caplog.text
