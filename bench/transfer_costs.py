"""What a 600 MB payload costs a transfer's ends, piece by piece, in one process.

    python -m bench.transfer_costs [--megabytes 600] [--repeats 5] [--write-docs]

The payload is 4 MiB chunks as gRPC hands them over. Timed, each the median of the repeats:
its SHA-256 and its CRC-32 (the check at each end, before and after the change of check);
copying it into one fresh buffer of its size (what a silo's download did before decoding
from the chunks themselves); and building and serialising one chunk message per chunk (what
the coordinator did for every download before serialising a round's messages once).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from bench.docs import replace_section
from shared.payload import CHUNK_BYTES
from shared.wire.v1 import federation_pb2 as pb


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first warms up
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[1:])


def _fill(chunks: list[bytes], size: int) -> None:
    buffer = bytearray(size)
    view, at = memoryview(buffer), 0
    for chunk in chunks:
        view[at : at + len(chunk)] = chunk
        at += len(chunk)


def measure(megabytes: int, repeats: int) -> dict[str, float]:
    count = max(1, megabytes * 10**6 // CHUNK_BYTES)
    chunks = [os.urandom(CHUNK_BYTES) for _ in range(count)]
    size = count * CHUNK_BYTES

    def sha256() -> None:
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)

    def crc32() -> None:
        value = 0
        for chunk in chunks:
            value = zlib.crc32(chunk, value)

    return {
        "SHA-256 of the payload": _median_ms(sha256, repeats),
        "CRC-32 of the payload": _median_ms(crc32, repeats),
        "copy into one fresh buffer": _median_ms(lambda: _fill(chunks, size), repeats),
        "build and serialise a message per chunk": _median_ms(
            lambda: [pb.PayloadChunk(data=c).SerializeToString() for c in chunks], repeats
        ),
    }


def table(megabytes: int, results: dict[str, float]) -> str:
    lines = [f"| {megabytes} MB in 4 MiB chunks | median ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.0f} |" for name, ms in results.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    text = table(args.megabytes, measure(args.megabytes, args.repeats))
    print(text)
    if args.write_docs:
        replace_section(Path("docs/benchmarks.md"), "transfer-costs", text)


if __name__ == "__main__":
    main()
