"""Who may call what, and how much at once: every RPC passes the guard before its handler.

The guard checks the caller's certificate role for the service, asks whether the certificate is
still allowed (revocation), and bounds the calls one certificate may hold open at once by kind,
so that no single peer can occupy the coordinator. Handlers read the admitted caller from
`caller()`.
"""

from __future__ import annotations

import contextvars
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from shared.tls import Peer, peer_of

# The servicer context of an event-loop handler.
Context = grpc.aio.ServicerContext[Any, Any]

_CALLER: contextvars.ContextVar[Peer] = contextvars.ContextVar("fedmllm_caller")
# Counts a refusal of the current call by its status code name.
_COUNT_REFUSAL: contextvars.ContextVar[Callable[[str], None]] = contextvars.ContextVar(
    "fedmllm_count_refusal"
)

# Checks a caller beyond its role: returns why it is refused (revoked, ...), or None.
Admission = Callable[[Peer], "tuple[grpc.StatusCode, str] | None"]


def caller() -> Peer:
    """The certificate identity the guard admitted for the current call."""
    return _CALLER.get()


async def refuse(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with `code` and `message`, counted before the caller can see it."""
    count = _COUNT_REFUSAL.get(None)
    if count is not None:
        count(code.name)
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


@dataclass(frozen=True)
class CallLimits:
    """Calls one certificate may have in flight at once, by kind; one more is refused with
    RESOURCE_EXHAUSTED. An honest silo needs one task stream, one transfer and a heartbeat."""

    streams: int = 2  # ReceiveTasks (a reconnecting silo briefly holds its old one too)
    uploads: int = 2  # UploadUpdate
    downloads: int = 2  # DownloadAdapter, ExportAdapter
    unary: int = 8  # everything else: Join, Heartbeat, reports, admin calls

    def of(self, kind: str) -> int:
        return int(getattr(self, kind))


def call_kind(method: str) -> str:
    name = method.rsplit("/", 1)[-1]
    if name == "ReceiveTasks":
        return "streams"
    if name == "UploadUpdate":
        return "uploads"
    if name in ("DownloadAdapter", "ExportAdapter"):
        return "downloads"
    return "unary"


class PeerGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Role, admission and per-certificate concurrency for every call (event-loop only)."""

    def __init__(
        self,
        *,
        roles: dict[str, str],
        limits: CallLimits,
        admission: Admission | None = None,
        on_refusal: Callable[[str, str], None] | None = None,
    ) -> None:
        self._roles = roles  # full service name -> the certificate role it requires
        self._limits = limits
        self._admission = admission
        self._on_refusal = on_refusal  # (method, status code name) of every refused call
        self._in_flight: Counter[tuple[str, str, str]] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        method: str = details.method
        service = method.strip("/").split("/", 1)[0]
        role = self._roles.get(service)
        if handler is None or role is None:
            return handler
        return _wrapped(handler, self, role, call_kind(method), method.rsplit("/", 1)[-1])

    async def admit(self, context: Context, role: str, kind: str, method: str) -> Peer:
        """The caller, if it may make this call now; else the call is refused."""
        on_refusal = self._on_refusal
        if on_refusal is not None:
            _COUNT_REFUSAL.set(lambda code: on_refusal(method, code))
        return await self._enter(context, role, kind)

    async def _enter(self, context: Context, role: str, kind: str) -> Peer:
        peer = peer_of(context)
        if peer is None:
            await refuse(context, grpc.StatusCode.UNAUTHENTICATED, "no verified client certificate")
        if peer.role != role:
            await refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate {peer.name!r} has role {peer.role!r}; this service needs {role!r}",
            )
        refusal = self._admission(peer) if self._admission is not None else None
        if refusal is not None:
            await refuse(context, *refusal)
        key = (peer.role, peer.name, kind)
        limit = self._limits.of(kind)
        if self._in_flight[key] >= limit:
            await refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{peer.name!r} already has {limit} {kind} call(s) in flight; "
                "finish one before starting another",
            )
        self._in_flight[key] += 1
        _CALLER.set(peer)
        return peer

    def leave(self, peer: Peer, kind: str) -> None:
        key = (peer.role, peer.name, kind)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    def in_flight(self, name: str) -> int:
        """Calls the certificate `name` holds open now (for tests and status)."""
        return sum(n for (_, who, _), n in self._in_flight.items() if who == name)


def _wrapped(handler: Any, guard: PeerGuard, role: str, kind: str, method: str) -> Any:
    """The handler behind the guard: admitted first, its refusals counted."""
    codec: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": _as_is_if_serialised(handler.response_serializer),
    }
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            peer = await guard.admit(context, role, kind, method)
            try:
                async for response in inner_stream(request, context):
                    yield response
            finally:
                guard.leave(peer, kind)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if handler.unary_stream is not None:  # a stream written with context.write()
        return grpc.unary_stream_rpc_method_handler(
            _admitted(handler.unary_stream, guard, role, kind, method), **codec
        )
    unary = handler.unary_unary is not None
    inner = handler.unary_unary if unary else handler.stream_unary
    assert inner is not None, "the federation has no bidirectional calls"

    make = grpc.unary_unary_rpc_method_handler if unary else grpc.stream_unary_rpc_method_handler
    return make(_admitted(inner, guard, role, kind, method), **codec)


def _as_is_if_serialised(serialize: Any) -> Any:
    """The handler's serializer, passing through a message the handler serialised itself (a
    round's download chunks are serialised once, not once for every silo that downloads)."""
    if serialize is None:
        return None

    def serialized(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    return serialized


def _admitted(inner: Any, guard: PeerGuard, role: str, kind: str, method: str) -> Any:
    """A coroutine handler behind the guard."""

    async def call(request: Any, context: Context) -> Any:
        peer = await guard.admit(context, role, kind, method)
        try:
            return await inner(request, context)
        finally:
            guard.leave(peer, kind)

    return call
