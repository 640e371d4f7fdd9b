"""Server optimizer step against the memory-traffic floor measured in the same run.

    python bench/server_optimizer.py [--params 150000000] [--repeats 11]

The floor: `x.add_(s)` over the same flat buffers streams 3 of them (read x, read s, write x); a
FedAdam / FedYogi step must stream 7 (read x, m, v, s; write x, m, v), so its floor is
t(add_) x 7/3. The steps run through the coordinator's own code path (GlobalModel.apply on a
round aggregate, its finiteness check included). Floor and steps are timed in turn within each
repetition, so that load from elsewhere hits all of them alike. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from coordinator.flat_adapter import FlatLayout
from coordinator.global_model import GlobalModel
from coordinator.run_state import RunSpec
from coordinator.strategies.kernels import adam_step, hyper


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=150_000_000)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = {"w": torch.randn(args.params)}
    flat = FlatLayout.of(start)
    x, total = flat.pack(start), torch.randn(args.params)

    def floor() -> None:
        x.add_(total)

    steps: dict[str, Callable[[], None]] = {"floor": floor}
    for strategy in ("fedadam", "fedyogi"):
        model = GlobalModel.start(RunSpec(strategy=strategy), flat, start)
        aggregate = model.begin_round(population=2)
        aggregate.total.normal_()
        aggregate.weight_sum = 3.0
        steps[strategy] = partial(model.apply, aggregate)
    medians = interleaved_medians(steps, args.repeats)
    m, v = torch.zeros(args.params), torch.full((args.params,), 1e-6)
    h = hyper(1 / 3, 1e-3, 0.9, 0.99, 1e-3)
    eager = interleaved_medians({"eager": lambda: adam_step(x, m, v, total, h)}, 3)["eager"]

    floor3 = medians["floor"]
    floor7 = floor3 * 7 / 3
    rows = [
        ("`x.add_(s)`, 3 streams (baseline)", floor3),
        ("FedAdam step, fused (coordinator path)", medians["fedadam"]),
        ("FedYogi step, fused (coordinator path)", medians["fedyogi"]),
        ("FedAdam step, same maths eager", eager),
    ]
    print(
        f"{args.params / 1e6:.0f}M float32 values, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.machine()}, "
        f"FEDMLLM_COMPILE={os.environ.get('FEDMLLM_COMPILE', '1')}, {args.repeats} repeats"
    )
    print(f"7-stream floor = {floor3 * 1e3:.1f} ms x 7/3 = {floor7 * 1e3:.1f} ms\n")
    print("| operation | median ms | / 7-stream floor |")
    print("|---|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1e3:.1f} | {seconds / floor7:.2f} |")


if __name__ == "__main__":
    main()
