"""The whole-round benchmark times every case through the coordinator's own code and tabulates
each memory speed its repetitions met apart."""

from __future__ import annotations

from pathlib import Path

import torch

from bench import server_optimizer
from bench.server_round import ORDERS, Case, Floor, RoundBench, Timing


def test_every_case_gets_a_row_per_speed_its_repetitions_met() -> None:
    text = server_optimizer.round_table(params=300_000, repeats=3, updates=[2], wires=["float32"])
    for strategy in ("fedavg", "fedadam"):
        for order in ORDERS:
            assert f"| {strategy} | 2 | float32 | {order} |" in text


def test_a_row_reads_one_speed_and_a_stalled_repetition_is_counted_not_mixed_in() -> None:
    case = Case("fedavg", 2, "float32", "shuffled")
    floors = [0.050, 0.086, 0.052, 0.088, 0.049, 0.090, 0.400]
    timing = Timing(ours=[0.06] * 7, floor=floors, arriving=[0.03] * 7)
    rows, stray = timing.rows(case)
    assert stray == 1
    assert rows == [
        "| fedavg | 2 | float32 | shuffled | slower | 3 | 88 | 60 | 30 | **0.67 / 0.68** |",
        "| fedavg | 2 | float32 | shuffled | faster | 3 | 50 | 60 | 30 | **1.15 / 1.20** |",
    ]


def test_the_received_floor_adds_every_chunk_of_each_update_where_it_belongs(
    tmp_path: Path,
) -> None:
    flat = server_optimizer.lora_layout(3_000_000)  # several chunks per update
    generator = torch.Generator().manual_seed(0)
    delta = {t.name: torch.randn(t.shape, generator=generator) for t in flat.tensors}
    bench = RoundBench(flat=flat, delta=delta, wire="float32", work=tmp_path)
    assert len(bench.chunks) > 2
    floor = Floor(flat.numel)
    assert floor.received(bench.chunks, "fedavg", 2) > 0
    assert torch.equal(floor.total, 2 * flat.pack(delta))
