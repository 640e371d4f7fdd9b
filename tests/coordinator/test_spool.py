"""Spool files: reused round after round, cut to the update they hold, read in place."""

from __future__ import annotations

import logging
import math
import mmap
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.aggregation import kernels, native
from coordinator.aggregation.receiver import UpdateReceiver, receive_bytes
from coordinator.aggregation.shape import UpdateShape
from coordinator.aggregation.spool import SpooledUpdates, SpoolPool, SpoolView
from coordinator.flat_adapter import FlatLayout
from coordinator.run_state import RunSpec
from coordinator.server import RunningCoordinator
from shared.payload import BLOCK_ELEMENTS, PayloadDigest
from shared.safetensors_stream import StateEncoder
from shared.wire.v1 import federation_pb2 as pb
from shared.wire.v1 import federation_pb2_grpc as pb_grpc
from tests.conftest import tls
from tests.helpers import ProtocolSilo, channel, constant_delta

LAYOUT = FlatLayout.of({"a": torch.zeros(3, 4), "b": torch.zeros(5)})


def test_files_handed_back_are_taken_again_and_new_ones_are_private(tmp_path: Path) -> None:
    pool = SpoolPool.at(tmp_path)
    assert SpoolPool.at(tmp_path) is pool
    first = pool.take()
    with pool.open(first) as spool:
        spool.write(b"x" * 10)
    assert first.stat().st_mode & 0o777 == 0o600
    second = pool.take()
    assert second != first  # the first is in use
    pool.give_back(first)
    pool.give_back(first)  # twice: kept once
    assert pool.take() == first
    assert pool.take() not in (first, second)


def test_a_full_disk_drains_the_files_kept_for_reuse(tmp_path: Path) -> None:
    pool = SpoolPool.at(tmp_path)
    kept, busy = pool.take(), pool.take()
    for path in (kept, busy):
        with pool.open(path) as spool:
            spool.write(b"\0" * 4096)
    pool.give_back(kept)
    pool.drain()
    assert not kept.exists() and busy.exists()  # a spool still in use is left alone
    assert pool.take() != kept


def test_a_reused_spool_holds_exactly_the_new_update(tmp_path: Path) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype="float32")
    pool = SpoolPool.at(tmp_path)
    path = pool.take()
    with pool.open(path) as spool:
        spool.write(b"\xff" * 1000)  # an earlier, longer update
    pool.give_back(path)
    state = {"a": torch.full((3, 4), 0.5), "b": torch.arange(5.0)}
    payload = StateEncoder(state, dtype=torch.float32).to_bytes()
    reused = pool.take()
    assert reused == path
    with pool.open(reused) as spool:
        receiver = UpdateReceiver(
            shape=shape, announced=PayloadDigest.of(payload), spool=spool, path=reused
        )
        receiver.write(payload)
        update = receiver.finish()
    assert reused.stat().st_size == LAYOUT.numel * 4
    with SpoolView(update.path, "float32") as view:
        assert torch.equal(view.values(0, LAYOUT.numel), LAYOUT.pack(state))


def test_a_spool_view_reads_in_the_wire_dtype_and_lets_pages_go(tmp_path: Path) -> None:
    shape = UpdateShape(layout=LAYOUT, dtype="bfloat16")
    state = {"a": torch.full((3, 4), 0.25), "b": torch.arange(5.0)}
    payload = StateEncoder(state, dtype=torch.bfloat16).to_bytes()
    update = receive_bytes(payload, shape=shape, path=tmp_path / "u.bin")
    with SpoolView(update.path, "bfloat16") as view:
        values = view.values(0, LAYOUT.numel)
        assert values.dtype == torch.bfloat16
        assert torch.equal(values.float(), LAYOUT.pack(state))
        del values
        view.release(0, LAYOUT.numel)
    assert (tmp_path / "u.bin").stat().st_size == LAYOUT.numel * 2


def mapped_kib(path: Path) -> int:
    """How much of `path` this process has mapped in memory now (its mappings' Rss)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:  # a mapping's first line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.parametrize("hold_kib", [0, 256])
def test_a_spool_view_lets_the_pages_read_go_once_more_than_it_may_hold(
    tmp_path: Path, hold_kib: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in stretches of 64 KiB, in order: with no hold every stretch is unmapped as it
    is let go; with a hold of 256 KiB the pages read stay mapped until more than that was
    read, then all go in one unmapping. Closing unmaps the rest. (The unmappings are
    recorded: how many pages the kernel maps around a fault varies with its page cache.)"""
    unmapped: list[tuple[int, int]] = []

    class Recording(mmap.mmap):
        def madvise(self, option: int, start: int = 0, length: int = 0) -> None:
            assert option == mmap.MADV_DONTNEED
            unmapped.append((start // 1024, length // 1024))
            super().madvise(option, start, length)

    monkeypatch.setattr(mmap, "mmap", Recording)
    path = tmp_path / "update.bin"
    values = torch.arange(256 * 1024, dtype=torch.float32)  # 1 MiB
    path.write_bytes(values.numpy().tobytes())
    stretch = 16 * 1024  # values: 64 KiB
    with SpoolView(path, "float32", hold=hold_kib * 1024) as view:
        for start in range(0, 8 * stretch, stretch):
            read = view.values(start, stretch)
            assert torch.equal(read, values[start : start + stretch])
            del read
            view.release(start, stretch)
        assert view.values(8 * stretch, 10).tolist() == values[8 * stretch :][:10].tolist()
    if hold_kib:
        assert unmapped == [(0, 320)]  # once 320 KiB were read; the next 192 stayed
    else:
        assert unmapped == [(64 * i, 64) for i in range(8)]
    assert mapped_kib(path) == 0


def test_a_coordinator_keeps_one_spool_per_upload_at_once_over_rounds(
    coordinator: RunningCoordinator, certs: Path, tiny_model: Path, tmp_path: Path
) -> None:
    admin = pb_grpc.AdminStub(channel(coordinator.port, tls(certs, "admin")))
    silos = [ProtocolSilo(coordinator.port, tls(certs, f"silo-{i}"), tiny_model) for i in (1, 2)]
    try:
        spec = RunSpec(rounds=3, silos_per_round=2, min_silos=2, round_deadline_s=30)
        admin.StartRun(pb.StartRunRequest(spec=spec.to_proto()))
        incoming = tmp_path / "checkpoints" / "incoming"
        seen: set[str] = set()
        for _ in range(3):
            for silo in silos:
                task = silo.next_task()
                silo.upload(task, constant_delta(silo.download(task), 0.01))
            seen |= {p.name for p in incoming.iterdir()}
        assert len(seen) == 2  # round 2 and 3 wrote over round 1's files
    finally:
        for silo in silos:
            silo.close()


def _spooled(tmp_path: Path, count: int, length: int, dtype: str = "float32") -> list[Path]:
    """`count` updates of `length` values over many magnitudes, each in its file."""
    generator = torch.Generator().manual_seed(count)
    paths = []
    for i in range(count):
        values = torch.randn(length, generator=generator)
        values *= torch.exp2(torch.randint(-20, 4, (length,), generator=generator).float())
        values[::89] = -0.0
        paths.append(tmp_path / f"update-{i}.bin")
        paths[-1].write_bytes(values.to(getattr(torch, dtype)).view(torch.uint8).numpy().tobytes())
    return paths


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("reading", ["read", "mapped"])
@pytest.mark.parametrize("write", [False, True])
def test_spooled_updates_add_as_the_kernels_do_one_after_another_read_or_mapped(
    tmp_path: Path, dtype: str, reading: str, write: bool, request: pytest.FixtureRequest
) -> None:
    """Read from their files by the native loop (in tiles of 65,536 values per thread, over
    threads: a stretch of several tiles and a tail, from an offset), or mapped without it:
    the same bits as the fold's kernels adding one update after another (ATen's `add_` for
    float32, the compiled widening loop for bfloat16), which a live fold uses."""
    if reading == "read" and (
        native.library() is None or (dtype == "bfloat16" and not kernels.native_bfloat16())
    ):
        pytest.skip("the native loops do not read these spools on this machine")
    length, element = 3 * 65_536 + 1_001, 4_099
    paths = _spooled(tmp_path, 3, length, dtype)
    alphas = [0.37, -2.5, 1 / 3]
    start = torch.randn(length - element, generator=torch.Generator().manual_seed(7))
    expected = start.clone()
    for i, (path, alpha) in enumerate(zip(paths, alphas, strict=True)):
        data = bytearray(path.read_bytes())
        values = torch.frombuffer(data, dtype=getattr(torch, dtype))[element:]
        kernels.add_scaled(expected, values, alpha, write=write and i == 0)
    if reading == "mapped":
        request.getfixturevalue("no_native_loops")
    got = start.clone()
    with SpooledUpdates(paths, dtype) as spooled:
        spooled.add_into(got, element, alphas, write=write)
        assert bool(spooled._files) == (reading == "read")
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # zeros' signs too
    if reading == "read":  # never mapped
        assert all(mapped_kib(path) == 0 for path in paths)


@pytest.mark.parametrize("loop", ["add_read", "add_measured"])
def test_bfloat16_spools_are_mapped_where_the_loop_would_add_otherwise(
    tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop that does not add as the compiled widening kernels do (here: one that leaves the
    first value a step off, injected, reading spools or adding live) is not used for bfloat16
    updates: their spools are mapped, and the compiled kernels add and measure them live."""
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    honest = getattr(native, loop)

    def off_by_a_step(total: torch.Tensor, *args: Any, **kw: Any) -> Any:
        done = honest(total, *args, **kw)
        total[0] = torch.nextafter(total[0], torch.tensor(math.inf))
        return done

    monkeypatch.setattr(native, loop, off_by_a_step)
    kernels.native_bfloat16.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert not kernels.native_bfloat16()
        assert "bfloat16 updates are added by the compiled kernels" in caplog.text
        with SpooledUpdates(_spooled(tmp_path, 1, 1000, "bfloat16"), "bfloat16") as spooled:
            assert spooled._views and not spooled._files
        values = torch.randn(2 * BLOCK_ELEMENTS).to(torch.bfloat16)
        total, expected = torch.zeros(values.numel()), torch.zeros(values.numel())
        kernels.add_measured(total, values, 0.5, write=False)
        kernels.fused(kernels.add_widened)(expected, values, kernels.hyper(0.5))
        assert torch.equal(total, expected)  # not a step off: the compiled kernel added them
    finally:
        kernels.native_bfloat16.cache_clear()  # (the next test asks again, unpatched)


def test_a_spooled_update_too_short_or_unreadable_is_named(tmp_path: Path) -> None:
    if native.library() is None:
        pytest.skip("the native loops are not built on this machine")
    first, second = _spooled(tmp_path, 2, 70_000)
    with second.open("r+b") as shrinking:
        shrinking.truncate(4 * 69_999 + 2)
    with pytest.raises(OSError, match=r"spooled update .*update-1\.bin is truncated"):
        SpooledUpdates([first, second], "float32")  # not whole values
    with pytest.raises(OSError, match=r"spooled update .*update-1\.bin is truncated"):
        SpooledUpdates([first, second], "float32", elements=70_000)
    total = torch.zeros(10_000)
    with SpooledUpdates([first, second], "float32", elements=69_000) as spooled:
        with second.open("r+b") as shrinking:  # cut after it was opened
            shrinking.truncate(4 * 65_000)
        with pytest.raises(OSError, match=r"update-1\.bin is truncated"):
            spooled.add_into(total, 59_000, [1.0, 1.0])
    directory = os.open(tmp_path, os.O_RDONLY)  # a read that fails for another reason
    try:
        with pytest.raises(OSError, match=r"could not be read: Is a directory"):
            native.add_read(total, [(directory, tmp_path)], 0, [1.0])
    finally:
        os.close(directory)
