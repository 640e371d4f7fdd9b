"""The server's work per round against its memory-traffic floor, measured in the same run.

    python bench/server_optimizer.py [--params 150000000] [--repeats 11] [--write-docs]

1. The optimizer step alone. The floor: `x.add_(s)` over the same flat buffers streams 3 of
   them (read x, read s, write x), FedAvg's floor; a FedAdam / FedYogi step must stream 7
   (read x, m, v, s; write x, m, v), so its floor is t(add_) x 7/3. The steps run through
   the coordinator's own code path (GlobalModel.apply on a round aggregate, its finiteness
   check included).
2. A whole round (bench/server_round.py): validation (measuring each update as it arrives),
   the fold of each update (live as it arrives where it is next in the fold's order, else from
   its spool), and the step, for 2 and 10 updates on a float32 and a bfloat16 wire and three
   arrival orders, against one in-memory float32 `add_` per update plus the fused step.
Floor and ours are timed in turn within each repetition, so that load from elsewhere hits both
alike. Prints Markdown tables; --write-docs puts them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from bench.docs import replace_section
from bench.server_round import HEADER, ORDERS, Case, left_out_note, measure
from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.run_state import RunSpec
from coordinator.strategies.kernels import adam_step, hyper
from shared.tensor_codec import TensorLayout

# A LoRA-shaped layout: rank 8 on projections of width 8192, A [8, 8192] and B [8192, 8].
RANK, WIDTH = 8, 8192


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for step in steps.values():  # warm-up: compilation, first-touch page faults
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def optimizer_table(params: int, repeats: int) -> str:
    torch.manual_seed(0)
    start = {"w": torch.randn(params)}
    flat = FlatLayout.of(start)
    x, total = flat.pack(start), torch.randn(params)

    def floor() -> None:
        x.add_(total)

    steps: dict[str, Callable[[], object]] = {"floor": floor}
    for strategy in ("fedavg", "fedadam", "fedyogi"):
        model = GlobalModel.start(RunSpec(strategy=strategy), flat, start)
        aggregate = model.begin_round(population=2)
        aggregate.total.normal_()
        aggregate.weight_sum = 3.0
        steps[strategy] = partial(model.apply, aggregate)
    medians = interleaved_medians(steps, repeats)
    m, v = torch.zeros(params), torch.full((params,), 1e-6)
    h = hyper(1 / 3, 1e-3, 0.9, 0.99, 1e-3)

    def eager_step() -> None:
        adam_step(x, m, v, total, h)

    eager = interleaved_medians({"eager": eager_step}, 3)["eager"]
    floor3 = medians["floor"]
    floor7 = floor3 * 7 / 3
    rows = [
        ("`x.add_(s)`, 3 streams (baseline)", floor3, floor3),
        (
            "FedAvg step, adding and summing in one pass (coordinator path)",
            medians["fedavg"],
            floor3,
        ),
        ("FedAdam step, fused (coordinator path)", medians["fedadam"], floor7),
        ("FedYogi step, fused (coordinator path)", medians["fedyogi"], floor7),
        ("FedAdam step, same maths eager", eager, floor7),
    ]
    lines = [
        f"3-stream floor = {floor3 * 1e3:.1f} ms; 7-stream floor = x 7/3 = {floor7 * 1e3:.1f} ms\n",
        "| operation | median ms | / its floor (3 streams for FedAvg, 7 for FedAdam / FedYogi) |",
        "|---|---:|---:|",
        *(f"| {label} | {s * 1e3:.1f} | {s / f:.2f} |" for label, s, f in rows),
    ]
    return "\n".join(lines)


def lora_layout(params: int) -> FlatLayout:
    """About `params` values in LoRA A / B pairs."""
    pairs = max(1, params // (2 * RANK * WIDTH))
    tensors = {}
    for i in range(pairs):
        stem = f"base_model.model.layers.{i // 4}.proj{i % 4}"
        tensors[f"{stem}.lora_A.weight"] = TensorLayout(
            f"{stem}.lora_A.weight", (RANK, WIDTH), "float32"
        )
        tensors[f"{stem}.lora_B.weight"] = TensorLayout(
            f"{stem}.lora_B.weight", (WIDTH, RANK), "float32"
        )
    return FlatLayout.from_layout(tensors)


def round_table(params: int, repeats: int, updates: list[int], wires: list[str]) -> str:
    flat = lora_layout(params)
    generator = torch.Generator().manual_seed(0)
    delta = {t.name: 0.01 * torch.randn(t.shape, generator=generator) for t in flat.tensors}
    cases = [
        Case(s, k, w, order)
        for w in wires
        for s in ("fedavg", "fedadam")
        for k in updates
        for order in ORDERS
    ]
    with tempfile.TemporaryDirectory() as work:
        timings = measure(cases, flat=flat, delta=delta, repeats=repeats, work=Path(work))
    lines = [
        f"{flat.numel / 1e6:.0f}M values in {len(flat.tensors)} LoRA tensors, {repeats} repeats\n",
        HEADER,
    ]
    left_out = []
    for case in cases:
        rows, stray = timings[case].rows(case)
        lines += rows
        if stray:
            left_out.append(f"{case.strategy} {case.updates} {case.wire} {case.order}: {stray}")
    if left_out:
        lines.append(left_out_note(left_out))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=150_000_000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--updates", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--wires", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    print(
        f"{args.params / 1e6:.0f}M float32 values, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.machine()}, "
        f"FEDMLLM_COMPILE={os.environ.get('FEDMLLM_COMPILE', '1')}\n"
    )
    optimizer = optimizer_table(args.params, args.repeats)
    print(optimizer, flush=True)
    server_round = round_table(args.params, max(args.repeats // 2, 3), args.updates, args.wires)
    print(f"\n{server_round}")
    if args.write_docs:
        docs = Path("docs/benchmarks.md")
        replace_section(docs, "server-optimizer", optimizer)
        replace_section(docs, "server-round", server_round)


if __name__ == "__main__":
    main()
