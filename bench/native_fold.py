"""The native float32 fold loops against ATen's two passes, and both against the floor, in one run.

    python -m bench.native_fold [--params 150000000] [--repeats 15] [--write-docs]

Each repetition runs, for each case, the floor (one in-memory `add_` per update, then the
step's floor), the coordinator's round with its native loops (coordinator/aggregation/native.c),
the same round with ATen's add and norm (the loops turned off, as on a machine without a C
compiler) and the received floor (the floor's `add_`, chunk by chunk from fresh buffers as the
receiver gets them, `Floor.received`: what adding what the network delivers costs, with no
measuring), in turn: bench/server_round.py's cases and code. This machine's memory runs at two
speeds that change on their own; each repetition is counted in the phase its floor shows, so
that a row reads as one phase, not a median of both (a repetition at a speed too few met, or
whose floor stalled, is left out and counted under the table).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from bench.docs import replace_section
from bench.server_optimizer import lora_layout
from bench.server_round import Case, Floor, RoundBench, left_out_note, phases
from coordinator.aggregation import native
from coordinator.global_model import GlobalModel
from coordinator.run_state import RunSpec

CASES = [
    Case("fedavg", 2, "float32", "fold's"),
    Case("fedadam", 2, "float32", "fold's"),
    Case("fedavg", 10, "float32", "shuffled"),
]


def run(params: int, repeats: int) -> dict[Case, list[tuple[float, ...]]]:
    """Per case, (floor, native, aten, received floor) seconds for each repetition after a
    warm-up."""
    if native.library() is None:
        raise SystemExit("the native fold loops are not built here: is there a C compiler?")
    flat = lora_layout(params)
    generator = torch.Generator().manual_seed(0)
    delta = {t.name: 0.01 * torch.randn(t.shape, generator=generator) for t in flat.tensors}
    start = flat.unpack(flat.zeros())
    models = {s: GlobalModel.start(RunSpec(strategy=s), flat, start) for s in ("fedavg", "fedadam")}
    floor = Floor(flat.numel)
    times: dict[Case, list[tuple[float, ...]]] = {c: [] for c in CASES}
    with tempfile.TemporaryDirectory() as work:
        bench = RoundBench(flat=flat, delta=delta, wire="float32", work=Path(work))
        bench.write_spools(max(c.updates for c in CASES))
        for repeat in range(repeats + 1):
            for case in CASES:
                floor_s = floor(case.strategy, case.updates)
                native_s, _ = bench.ours(models[case.strategy], case)
                with native.unavailable():
                    aten_s, _ = bench.ours(models[case.strategy], case)
                received_s = floor.received(bench.chunks, case.strategy, case.updates)
                if repeat:
                    times[case].append((floor_s, native_s, aten_s, received_s))
            print(f"repetition {repeat}/{repeats}", flush=True)
    return times


def table(times: dict[Case, list[tuple[float, ...]]]) -> str:
    lines = [
        "| strategy | updates | arrival order | memory phase | repetitions | floor ms | "
        "native ms | ATen ms | received floor ms | native / floor | ATen / floor | "
        "native / ATen | native / received floor |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    left_out = []
    for case, rows in times.items():
        levels, stray = phases([row[0] for row in rows])
        if stray:
            left_out.append(f"{case.strategy} {case.updates} {case.order}: {stray}")
        for phase, indices in reversed(levels.items()):
            picked = [rows[i] for i in indices]
            med = [statistics.median(r[i] for r in picked) * 1e3 for i in range(4)]
            ratio = [
                statistics.median(r[a] / r[b] for r in picked)
                for a, b in ((1, 0), (2, 0), (1, 2), (1, 3))
            ]
            lines.append(
                f"| {case.strategy} | {case.updates} | {case.order} | {phase} | {len(picked)} | "
                f"{med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {med[3]:.0f} | "
                f"**{ratio[0]:.2f}** | {ratio[1]:.2f} | {ratio[2]:.2f} | {ratio[3]:.2f} |"
            )
    if left_out:
        lines.append(left_out_note(left_out))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=150_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    body = (
        f"{args.params / 1e6:.0f}M float32 values, {args.repeats} repetitions, "
        f"{torch.get_num_threads()} threads\n\n{table(run(args.params, args.repeats))}"
    )
    print(body)
    if args.write_docs:
        replace_section(Path("docs/benchmarks.md"), "native-fold", body)


if __name__ == "__main__":
    main()
