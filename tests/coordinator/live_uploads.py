"""Uploads streaming into a round's fold through the real receiver, chunk by chunk, for the
live-fold tests: three silos, their payloads, and the reference sums from the spools alone."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from coordinator.aggregation import kernels, native
from coordinator.aggregation.fold import AggregationRule, Arrival, RoundFold
from coordinator.aggregation.live import LiveFold
from coordinator.aggregation.receiver import UpdateReceiver, receive_bytes
from coordinator.aggregation.shape import UpdateShape
from coordinator.flat_adapter import FlatLayout
from coordinator.strategies import RoundAggregate
from shared.payload import BLOCK_ELEMENTS, PayloadDigest, iter_chunks
from shared.quantization import INT8, QuantizedEncoder
from shared.safetensors_stream import StateEncoder
from shared.tensor_codec import CONTROL_PREFIX, encode_state

# Several norm blocks (32768 values) per tensor, and tensors that end inside a block.
SHAPES = {"layer.0.lora_A.weight": (8, 9001), "layer.0.lora_B.weight": (9001, 8), "w": (5,)}
LAYOUT = FlatLayout.of({k: torch.zeros(s) for k, s in SHAPES.items()})
NAMES = ["silo-a", "silo-b", "silo-c"]
FOLD_LOCKS: dict[int, threading.Lock] = {}
WEIGHTS = {"silo-a": 3.0, "silo-b": 11.0, "silo-c": 7.0}
CUTS = {"silo-a": 65_537, "silo-b": 100_003, "silo-c": 33_333}  # chunk bytes, as senders cut


def checked_in_pass(wire: str = "float32") -> bool:
    """Whether whole-block chunks of `wire` values are CRC-checked in the native pass that
    measures or folds them here (the loops serve the dtype, and their CRC-32 folds)."""
    served = wire == "float32" or kernels.native_bfloat16()
    return native.crc_folds() and served


def update_shape(wire: str, control: bool) -> UpdateShape:
    """What the round expects for `wire`: a float dtype, or int8 codes decoded to float32."""
    if wire == INT8:
        return UpdateShape(layout=LAYOUT, dtype="float32", with_control=control, quantized=True)
    return UpdateShape(layout=LAYOUT, dtype=wire, with_control=control)


def _state(silo: str, control: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(NAMES.index(silo))
    state = {k: torch.randn(s, generator=generator) * 0.01 for k, s in SHAPES.items()}
    if control:
        state |= {
            CONTROL_PREFIX + k: torch.randn(s, generator=generator) for k, s in SHAPES.items()
        }
    return state


def payload_of(silo: str, wire: str, control: bool) -> bytes:
    state = _state(silo, control)
    if wire == INT8:
        return QuantizedEncoder(state).to_bytes()
    return encode_state({k: v.to(getattr(torch, wire)) for k, v in state.items()})


def sender_chunks(silo: str, wire: str, control: bool) -> list[bytes]:
    """payload_of's bytes as the silo agent cuts them (silo_agent/transfer.py): the header,
    then chunks of whole norm blocks from the start of each run (two blocks here, where the
    agent sends as many as 4 MiB hold), a run's last chunk ending with its short block."""
    dtype = getattr(torch, wire)
    encoder = StateEncoder({k: v.to(dtype) for k, v in _state(silo, control).items()}, dtype=dtype)
    return list(
        encoder.chunks(chunk_bytes=2 * BLOCK_ELEMENTS * encoder.itemsize, block=BLOCK_ELEMENTS)
    )


def new_fold(shape: UpdateShape, rule: AggregationRule | None = None) -> RoundFold:
    control = LAYOUT.zeros() if shape.with_control else None
    # sums that still hold an earlier round's values, as the reused buffers do
    total = torch.full((LAYOUT.numel,), 123.0)
    if control is not None:
        control.fill_(-7.0)
    return RoundFold(
        aggregate=RoundAggregate(total=total, control_total=control, population=5),
        rule=rule or AggregationRule(),
        selected=NAMES,
        shape=shape,
    )


class Upload:
    """One update streaming in: `next(upload)` receives one chunk; exhausted once finished."""

    def __init__(
        self,
        fold: RoundFold,
        silo: str,
        payload: bytes,
        spool: Path,
        announced: PayloadDigest | None = None,
        cut: list[bytes] | None = None,
    ) -> None:
        """`cut`: the payload in these chunks (else in CUTS[silo] bytes each)."""
        self.fold, self.silo, self.payload, self.path = fold, silo, payload, spool
        self.fold_lock = FOLD_LOCKS.setdefault(id(fold), threading.Lock())
        self.announced = announced or PayloadDigest.of(payload)
        self._cut = cut or list(iter_chunks(payload, CUTS[silo]))
        assert b"".join(self._cut) == payload
        self.chunks = len(self._cut)
        self.live: LiveFold | None = fold.offer(silo, WEIGHTS[silo])
        self._steps = self._stream()

    def _stream(self) -> Iterator[None]:
        with self.path.open("wb") as spool:
            receiver = UpdateReceiver(
                shape=self.fold._shape,
                announced=self.announced,
                spool=spool,
                path=self.path,
                live=self.live,
            )
            try:
                for chunk in self._cut:
                    receiver.write(chunk)
                    yield
                received = receiver.finish()
            except Exception:
                if self.live is not None:
                    self.fold.abandon(self.live)
                raise
        weight = WEIGHTS[self.silo]
        arrival = Arrival(update=received, weight=weight, num_samples=1, steps=1)
        with self.fold_lock:  # as the coordinator serialises folds
            self.fold.add(self.silo, arrival, live=self.live)

    def __iter__(self) -> Iterator[None]:
        return self._steps


def reference(shape: UpdateShape, silos: list[str], tmp_path: Path) -> RoundAggregate:
    """The same updates folded from their spools only (received whole, then added)."""
    fold = new_fold(shape)
    for silo in silos:
        path = tmp_path / f"reference-{silo}.bin"
        payload = payload_of(silo, INT8 if shape.quantized else shape.dtype, shape.with_control)
        received = receive_bytes(payload, shape=shape, path=path)
        fold.add(silo, Arrival(update=received, weight=WEIGHTS[silo], num_samples=1, steps=1))
    fold.finish()
    return fold.aggregate


def assert_same_sums(got: RoundAggregate, expected: RoundAggregate) -> None:
    assert got.weight_sum == expected.weight_sum
    assert torch.equal(got.total, expected.total)  # bit for bit
    if expected.control_total is not None:
        assert got.control_total is not None
        assert torch.equal(got.control_total, expected.control_total)


def interleave(uploads: list[Upload]) -> None:
    """One chunk of each upload in turn, as concurrent streams arrive."""
    for _ in itertools.zip_longest(*uploads):
        pass


def poisoned_payload(silo: str, wire: str, at: int = -4) -> bytes:
    """A payload with four NaN values from data element `at` (negative: from the end)."""
    payload = bytearray(payload_of(silo, wire, False))
    itemsize = torch.empty(0, dtype=getattr(torch, wire)).element_size()
    start = len(payload) - LAYOUT.numel * itemsize + (at % LAYOUT.numel) * itemsize
    nan = torch.full((4,), float("nan"), dtype=getattr(torch, wire))
    raw = nan.view(torch.uint8).numpy().tobytes()
    payload[start : start + len(raw)] = raw
    return bytes(payload)


def arrive(fold: RoundFold, silos: list[str], wire: str, directory: Path) -> None:
    """Each of `silos` uploads whole, one after another, and is accepted."""
    for silo in silos:
        interleave([Upload(fold, silo, payload_of(silo, wire, False), directory / f"{silo}.bin")])


def streaming(
    fold: RoundFold, silo: str, wire: str, directory: Path, *, chunks: int = 2
) -> tuple[Upload, Iterator[None]]:
    """`silo`'s upload with its first `chunks` chunks received: the rest still to come."""
    upload = Upload(fold, silo, payload_of(silo, wire, False), directory / f"{silo}.bin")
    steps = iter(upload)
    for _ in range(chunks):
        next(steps)
    return upload, steps
