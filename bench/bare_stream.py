"""The floor of a transfer: a gRPC server and client that only move bytes, with the
coordinator's mutual TLS, channel and server options and chunk messages. An upload is read and
dropped; a download is served from a payload held in memory. Checked, both ends also take the
CRC-32 of what passes (the floor of any transfer that verifies one), each with its own side's
check: the server with the coordinator's (coordinator/aggregation/native.py), the client with
zlib's, as the silo agent does.

    python -m bench.bare_stream --certs DIR --port-file FILE   (serves until killed)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc

from coordinator.aggregation import native
from shared.grpc_options import SERVER_OPTIONS
from shared.tls import TlsFiles, server_credentials
from shared.wire.v1 import federation_pb2 as pb

SERVICE = "bench.BareStream"


class BareStream:
    """Upload: PayloadChunk stream -> UploadReceipt. Download: UploadReceipt (the size
    wanted, and the chunk size in task_id) -> PayloadChunk stream."""

    def __init__(self) -> None:
        self._payloads: dict[int, bytes] = {}

    async def upload(self, requests: AsyncIterator[pb.PayloadChunk], context: Any) -> Any:
        received = 0
        async for message in requests:
            received += len(message.data)
        return pb.UploadReceipt(bytes_received=received)

    async def upload_checked(self, requests: AsyncIterator[pb.PayloadChunk], context: Any) -> Any:
        """As `upload`, checking each chunk in a worker thread while the next one arrives."""
        crc32, received = 0, 0
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[int] | None = None
        async for message in requests:
            data = message.data
            received += len(data)
            if pending is not None:
                crc32 = await pending
            pending = loop.run_in_executor(None, native.crc32, data, crc32)
        if pending is not None:
            crc32 = await pending
        return pb.UploadReceipt(bytes_received=received, task_id=f"{crc32:08x}")

    async def download(self, request: pb.UploadReceipt, context: Any) -> Any:
        size, chunk = request.bytes_received, int(request.task_id)
        if size not in self._payloads:
            self._payloads[size] = os.urandom(size)
        payload = self._payloads[size]
        for start in range(0, size, chunk):
            yield pb.PayloadChunk(data=payload[start : start + chunk])

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Upload": grpc.stream_unary_rpc_method_handler(
                    self.upload,
                    request_deserializer=pb.PayloadChunk.FromString,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
                "UploadChecked": grpc.stream_unary_rpc_method_handler(
                    self.upload_checked,
                    request_deserializer=pb.PayloadChunk.FromString,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
                "Download": grpc.unary_stream_rpc_method_handler(
                    self.download,
                    request_deserializer=pb.UploadReceipt.FromString,
                    response_serializer=pb.PayloadChunk.SerializeToString,
                ),
            },
        )


async def _serve(certs: Path, port_file: Path) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers([BareStream().handler()])
    tls = TlsFiles.in_directory(certs, "coordinator")
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def upload(
    channel: grpc.Channel, payload: bytes, *, chunk_bytes: int, checked: bool = False
) -> int:
    """Stream `payload` in chunks (checked at both ends if `checked`); the bytes received."""
    call = channel.stream_unary(
        f"/{SERVICE}/UploadChecked" if checked else f"/{SERVICE}/Upload",
        request_serializer=pb.PayloadChunk.SerializeToString,
        response_deserializer=pb.UploadReceipt.FromString,
    )
    crc32 = 0

    def chunks() -> Iterator[pb.PayloadChunk]:
        nonlocal crc32
        for start in range(0, len(payload), chunk_bytes):
            chunk = payload[start : start + chunk_bytes]
            if checked:
                crc32 = zlib.crc32(chunk, crc32)
            yield pb.PayloadChunk(data=chunk)

    receipt: pb.UploadReceipt = call(chunks())
    if checked and receipt.task_id != f"{crc32:08x}":
        raise RuntimeError("the bare server checked other bytes")
    return receipt.bytes_received


def download(
    channel: grpc.Channel, size: int, *, chunk_bytes: int, checked: bool = False
) -> list[bytes]:
    """`size` bytes from the server, as the chunks they came in (checked if `checked`)."""
    call = channel.unary_stream(
        f"/{SERVICE}/Download",
        request_serializer=pb.UploadReceipt.SerializeToString,
        response_deserializer=pb.PayloadChunk.FromString,
    )
    request = pb.UploadReceipt(bytes_received=size, task_id=str(chunk_bytes))
    crc32 = 0
    chunks = []
    for message in call(request):
        chunks.append(message.data)
        if checked:
            crc32 = zlib.crc32(chunks[-1], crc32)
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--certs", type=Path, required=True, help="create_federation's directory")
    parser.add_argument("--port-file", type=Path, required=True, help="written once serving")
    args = parser.parse_args()
    asyncio.run(_serve(args.certs, args.port_file))


if __name__ == "__main__":
    main()
