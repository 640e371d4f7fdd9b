"""Every gRPC channel and server option in one place, with the reason for its value."""

from __future__ import annotations

from shared.payload import CHUNK_BYTES

# Payloads are chunked below 4 MiB, so the default message limits stay; this names them
# explicitly so that a chunk plus its framing always fits.
MAX_MESSAGE_BYTES = CHUNK_BYTES + 256 * 1024

# Silos sit behind institutional firewalls and NAT that drop idle TCP flows after minutes;
# pings every 30 s keep a task stream alive through a long local epoch.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

# What the coordinator lets a silo send ahead on an upload it is not reading at the moment
# (HTTP/2's default window). 32 uploads at once took 120 MB more with 1 MiB (measured).
STREAM_WINDOW_BYTES = 64 * 1024

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # A silo waits for a restarted coordinator: look again every 0.5-2 s, not up to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Accept the clients' keepalive pings, which arrive at most every KEEPALIVE_TIME_MS.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.keepalive_permit_without_calls", 1),
    # A new server on the same port in tests must never share it with an old one.
    ("grpc.so_reuseport", 0),
    # A connection without a call for this long is closed (an admin's, an abandoned one): a
    # silo always holds its task stream, so its connection is never idle.
    ("grpc.max_connection_idle_ms", 300_000),
    # Memory independent of how many silos upload at once. With bandwidth-delay probing on,
    # gRPC announces at least 4 MiB of window to every stream and buffers that much of each
    # upload that is not being read (uploads wait for one of coordinator/upload.py's chunk
    # permits): 32 uploads at once kept about 250 MB more (measured, docs/benchmarks.md). A
    # stream being read still gets a window the size of the message it is reading, so an
    # upload's own speed does not depend on this.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
]
