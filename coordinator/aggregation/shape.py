"""What an update of a run must look like on the wire, and where its values go.

An update is the delta of every adapter tensor (and, for SCAFFOLD, every control tensor,
named "control::<name>") in one wire dtype, laid out as safetensors writes it: tensors sorted
by name, contiguous. Its data section is therefore a few long runs of values, each bound for
one contiguous stretch of the coordinator's flat buffers (for PEFT's names: the whole adapter,
then the whole control variate).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass

import torch

from coordinator.flat_adapter import FlatLayout
from shared.quantization import ABSMAX, CODE_MAP, CODE_MAP_SIZE, blocks_of, prefix_bytes
from shared.tensor_codec import CONTROL_PREFIX

# safetensors dtype codes of the float dtypes an update may travel in (int8 updates travel as
# U8 codes beside F32 scales: shared/quantization.py).
FLOAT_WIRE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@dataclass(frozen=True)
class Run:
    """Consecutive values of the data section bound for one stretch of a flat buffer."""

    start: int  # element offset in the data section
    count: int
    control: bool  # into the control-variate sum, else the adapter sum
    target: int  # element offset in that flat buffer


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    start: int  # element offset in the data section
    control: bool
    target: int


@dataclass(frozen=True)
class UpdateShape:
    """Every adapter tensor (and control tensor) of the flat layout, in one wire dtype, or
    `quantized` as blockwise 8-bit codes (shared/quantization.py), decoded to float32 (then
    `dtype`) as they arrive: what is measured, folded and spooled is always `dtype`."""

    layout: FlatLayout
    dtype: str  # float32, bfloat16 or float16
    with_control: bool = False
    quantized: bool = False

    @property
    def itemsize(self) -> int:
        return int(torch.empty(0, dtype=getattr(torch, self.dtype)).element_size())

    @property
    def numel(self) -> int:
        return self.layout.numel * (2 if self.with_control else 1)

    @property
    def wire_data_bytes(self) -> int:
        """Bytes of the data section on the wire."""
        if self.quantized:
            return prefix_bytes(self.numel) + self.numel
        return self.numel * self.itemsize

    @property
    def spool_bytes(self) -> int:
        """Bytes of an update's spool: its values as measured and folded (int8 codes take
        four times their wire bytes there)."""
        return self.numel * self.itemsize

    @property
    def wire_name(self) -> str:
        """What the data travels as, for refusals."""
        return "int8 codes" if self.quantized else self.dtype

    @functools.cached_property
    def entries(self) -> list[Entry]:
        """Every tensor of the update in data-section order (sorted by name)."""
        bound = [
            (prefix + t.name, t.shape, prefix != "", offset)
            for prefix in (("", CONTROL_PREFIX) if self.with_control else ("",))
            for t, offset in zip(self.layout.tensors, self.layout.offsets, strict=True)
        ]
        entries, start = [], 0
        for name, shape, control, target in sorted(bound):
            entries.append(Entry(name, shape, start, control, target))
            start += math.prod(shape)
        return entries

    @functools.cached_property
    def runs(self) -> list[Run]:
        """The data section as maximal runs of values with one contiguous destination."""
        runs: list[Run] = []
        for e in self.entries:
            count = math.prod(e.shape)
            last = runs[-1] if runs else None
            if last and last.control == e.control and last.target + last.count == e.target:
                runs[-1] = Run(last.start, last.count + count, last.control, last.target)
            else:
                runs.append(Run(e.start, count, e.control, e.target))
        return runs

    def expected_header(self) -> dict[str, tuple[str, list[int], int, int]]:
        """name -> (dtype code, shape, start, end) as safetensors must describe the update."""
        if self.quantized:
            blocks, base = blocks_of(self.numel), prefix_bytes(self.numel)
            return {
                ABSMAX: ("F32", [blocks], 0, 4 * blocks),
                CODE_MAP: ("F32", [CODE_MAP_SIZE], 4 * blocks, base),
                **{
                    e.name: (
                        "U8",
                        list(e.shape),
                        base + e.start,
                        base + e.start + math.prod(e.shape),
                    )
                    for e in self.entries
                },
            }
        code, size = FLOAT_WIRE_CODES[self.dtype], self.itemsize
        return {
            e.name: (code, list(e.shape), e.start * size, (e.start + math.prod(e.shape)) * size)
            for e in self.entries
        }

    @functools.cached_property
    def run_starts(self) -> list[int]:
        """Each run's first data element, in order (for bisect)."""
        return [r.start for r in self.runs]

    def run_at(self, element: int) -> Run:
        """The run holding data element `element` (asked for every chunk folded live)."""
        return self.runs[bisect.bisect_right(self.run_starts, element) - 1]

    def name_at(self, element: int) -> str:
        starts = [e.start for e in self.entries]
        return self.entries[bisect.bisect_right(starts, element) - 1].name
