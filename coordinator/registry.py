"""The silos that joined: their sessions, task queues and liveness.

Sessions are shared by the server's event loop (which serves their task streams) and the run
thread (which hands out tasks): every field is guarded by one lock, and a task reaches a stream
through the event loop's own queue, so that a waiting stream holds no thread.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from shared.wire.v1 import federation_pb2 as pb


@dataclass(frozen=True)
class StreamEnd:
    """Ends a task stream with this status: superseded, revoked, or the coordinator closing."""

    code: grpc.StatusCode
    message: str


# At most this many operator notes are kept per silo (newest last).
MAX_NOTES = 3
# Heartbeat states of a silo at work on a task (see the silo agent's states).
BUSY_STATES = ("training", "uploading", "evaluating")


class DuplicateAgent(Exception):
    """A second agent process presents a certificate whose first agent is still connected."""


@dataclass
class SiloSession:
    """One silo's current session: a new Join replaces it, ending the old task stream."""

    silo_id: str
    session_id: str
    num_train_samples: int
    num_test_samples: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    state: str = "joined"
    state_since: float = field(default_factory=time.monotonic)  # when `state` last changed
    weights_fingerprint: str = ""  # what the silo reported of its base weights
    streaming: bool = False
    stream_opened: bool = False  # False between Join and the first ReceiveTasks
    agent_instance: str = ""  # random per agent process ("" from older agents)
    tasks: asyncio.Queue[pb.RoundTask | StreamEnd] = field(default_factory=asyncio.Queue)


class SiloRegistry:
    """Thread-safe table of silo sessions; a silo is available while its task stream is open."""

    def __init__(self, *, liveness_timeout_s: float) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SiloSession] = {}
        self._by_session: dict[str, SiloSession] = {}
        self._liveness_timeout_s = liveness_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notes: dict[str, list[str]] = {}
        self._stragglers: dict[str, int] = {}  # silo -> last round it is asked last in
        self.closed = threading.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop that serves the task streams (their queues belong to it)."""
        self._loop = loop

    def _deliver(self, session: SiloSession, task: pb.RoundTask | StreamEnd) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(session.tasks.put_nowait, task)

    def join(
        self,
        silo_id: str,
        num_train_samples: int,
        num_test_samples: int = 0,
        *,
        agent_instance: str = "",
        weights_fingerprint: str = "",
    ) -> SiloSession:
        """A new session for the silo, replacing its old one; DuplicateAgent if another agent
        process holds a live session with this identity."""
        session = SiloSession(
            silo_id=silo_id,
            session_id=secrets.token_hex(16),
            num_train_samples=num_train_samples,
            num_test_samples=num_test_samples,
            agent_instance=agent_instance,
            weights_fingerprint=weights_fingerprint,
        )
        with self._lock:
            old = self._sessions.get(silo_id)
            if (
                old is not None
                and old.agent_instance
                and agent_instance
                and old.agent_instance != agent_instance
                and self._alive(old, time.monotonic())
            ):
                self._note(silo_id, "a second agent with this certificate was refused")
                raise DuplicateAgent(silo_id)
            if old is not None:
                self._by_session.pop(old.session_id, None)
            self._sessions[silo_id] = session
            self._by_session[session.session_id] = session
        if old is not None:
            message = f"silo {silo_id!r}: superseded by a newer session of the same identity"
            self._deliver(old, StreamEnd(grpc.StatusCode.ABORTED, message))
        return session

    def end(self, silo_id: str, end: StreamEnd) -> None:
        """Forget the silo's session and end its task stream with `end` (a revocation)."""
        with self._lock:
            session = self._sessions.pop(silo_id, None)
            if session is not None:
                self._by_session.pop(session.session_id, None)
        if session is not None:
            self._deliver(session, end)

    def _note(self, silo_id: str, note: str) -> None:
        """Keep an operator note on a silo (caller holds the lock)."""
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {note}"
        self._notes[silo_id] = [*self._notes.get(silo_id, []), stamped][-MAX_NOTES:]

    def note(self, silo_id: str, note: str) -> None:
        with self._lock:
            self._note(silo_id, note)

    def mark_stragglers(self, silos: list[str], *, round_index: int, last_round: int) -> None:
        """These silos missed an attempt of `round_index`: ask them last until `last_round`."""
        with self._lock:
            for silo in silos:
                self._stragglers[silo] = last_round
                self._note(silo, f"straggler: missed round {round_index}")

    def stragglers(self, round_index: int) -> set[str]:
        with self._lock:
            return {s for s, until in self._stragglers.items() if until >= round_index}

    def weights_fingerprints(self) -> dict[str, str]:
        """What each connected silo reported of its base weights (when it did)."""
        now = time.monotonic()
        with self._lock:
            return {
                s.silo_id: s.weights_fingerprint
                for s in self._sessions.values()
                if s.weights_fingerprint and self._alive(s, now)
            }

    def session(self, session_id: str) -> SiloSession | None:
        with self._lock:
            return self._by_session.get(session_id)

    def is_current(self, session: SiloSession) -> bool:
        with self._lock:
            return self._sessions.get(session.silo_id) is session

    def touch(self, session: SiloSession, state: str | None = None) -> bool:
        """Record a heartbeat of `session`; False when it is no longer the silo's current one."""
        with self._lock:
            if self._sessions.get(session.silo_id) is not session:
                return False
            session.last_seen = time.monotonic()
            if state and state != session.state:
                session.state, session.state_since = state, session.last_seen
            return True

    def open_stream(self, session: SiloSession) -> bool:
        """Mark the session's task stream open; False if one is open already."""
        with self._lock:
            if session.streaming:
                return False
            session.streaming = session.stream_opened = True
            session.last_seen = time.monotonic()
            return True

    def set_streaming(self, session: SiloSession, streaming: bool) -> None:
        with self._lock:
            session.streaming = streaming
            session.stream_opened = session.stream_opened or streaming
            session.last_seen = time.monotonic()

    def _alive(self, session: SiloSession, now: float) -> bool:
        return session.streaming and now - session.last_seen <= self._liveness_timeout_s

    def _ids(self, keep: Callable[[SiloSession, float], bool]) -> list[str]:
        """The silos whose current session `keep(session, now)` accepts, sorted for seeded
        selection."""
        now = time.monotonic()
        with self._lock:
            return sorted(s.silo_id for s in self._sessions.values() if keep(s, now))

    def available(self) -> list[str]:
        """Silos to train: an open task stream, a recent heartbeat and training samples."""
        return self._ids(lambda s, now: self._alive(s, now) and s.num_train_samples > 0)

    def connected(self) -> list[str]:
        """Every silo with an open task stream and a recent heartbeat."""
        return self._ids(self._alive)

    def reachable(self) -> list[str]:
        """Connected silos plus those that just joined and have yet to open their task stream:
        a silo that reconnects is still expected to answer the task it owes."""
        return self._ids(
            lambda s, now: (
                self._alive(s, now)
                or (not s.stream_opened and now - s.last_seen <= self._liveness_timeout_s)
            )
        )

    def evaluators(self) -> list[str]:
        """Connected silos that hold a test split (evaluation-only silos included)."""
        return self._ids(lambda s, now: self._alive(s, now) and s.num_test_samples > 0)

    def declared_test_samples(self, silo_id: str) -> int:
        with self._lock:
            session = self._sessions.get(silo_id)
            return session.num_test_samples if session is not None else 0

    def send(self, silo_id: str, task: pb.RoundTask) -> bool:
        with self._lock:
            session = self._sessions.get(silo_id)
            if session is None or not session.streaming:
                return False
        self._deliver(session, task)
        return True

    def close(self) -> None:
        """End every task stream: the coordinator is shutting down."""
        self.closed.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self._deliver(session, StreamEnd(grpc.StatusCode.UNAVAILABLE, "coordinator closing"))

    def declared_samples(self, silo_id: str) -> int:
        """The training-sample count the silo declared when it joined (0 if unknown)."""
        with self._lock:
            session = self._sessions.get(silo_id)
            return session.num_train_samples if session is not None else 0

    def connected_count(self) -> int:
        return len(self.connected())

    def snapshot(self, *, hung_after_s: float = 0.0) -> list[pb.SiloInfo]:
        """Every silo with a session; one whose heartbeats have said it is working on a task
        for longer than `hung_after_s` (when given) is noted as hung."""
        now = time.monotonic()
        with self._lock:
            infos = []
            for s in sorted(self._sessions.values(), key=lambda s: s.silo_id):
                notes = list(self._notes.get(s.silo_id, []))
                busy = now - s.state_since
                if hung_after_s and s.state.startswith(BUSY_STATES) and busy > hung_after_s:
                    notes.append(f"hung: {s.state!r} for {busy:.0f} s")
                infos.append(
                    pb.SiloInfo(
                        silo_id=s.silo_id,
                        connected=self._alive(s, now),
                        seconds_since_seen=now - s.last_seen,
                        num_train_samples=s.num_train_samples,
                        num_test_samples=s.num_test_samples,
                        state=s.state,
                        notes=notes,
                    )
                )
            return infos
