"""The gRPC server: sessions, task delivery, reply checks, and the :class:`Link` the engine uses.

Why asyncio: a connected client is one open stream. ``grpc.aio`` keeps each as a coroutine on
one event loop (in a background thread), so thousands of idle devices cost memory per stream,
not a thread each. The engine's thread talks to the loop only through ``exchange`` and friends.

The server moves bytes and decides nothing about the algorithm: it delivers each task to its
client, refuses replies that do not answer an open task (stale round, unknown task, wrong
client), malformed or oversized payloads and those the engine's ``validate`` hook rejects, and
returns what arrived by the deadline. One misbehaving client never disturbs the others.

Split learning: with a :class:`~fedkit.split.wire.SplitEndpoint` the ``Split`` stream of each
open split task is bound to (client, task id), its batches reassembled under the endpoint's cap
and handed to ``endpoint.exchange`` in a worker thread (it runs torch), the replies streamed
back; the contract, statuses included, is in the header of protos/fedkit/v1/fedkit.proto.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import queue
import resource
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from fedkit.transport import overhead
from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport._proto import fedkit_pb2_grpc as pb_grpc
from fedkit.transport.security import (
    Authenticator,
    AuthError,
    ServerTls,
    parse_metadata,
    peer_common_name,
)
from fedkit.transport.serde import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    WINDOW_BYTES,
    Reassembler,
    SplitAssembler,
    TransportError,
    _slices,
    reply_from_proto,
    split_messages,
    task_to_proto,
)
from fedkit.types import Arrival, ClientId, Reply, Task
from fedkit.untrusted import clip, shorten

if TYPE_CHECKING:  # imported where used at run time: fedkit.split's package imports torch
    from fedkit.split.wire import SplitEndpoint, SplitFrame

log = logging.getLogger("fedkit.transport")

Validator = Callable[[Task, Reply], Any]
"""Called on every received reply that answers an open task; raises ValueError (with a
message) to reject it, else returns what it made of the reply (the engine's acceptance rule
returns the decoded update), handed to the engine as ``Arrival.accepted``."""
Admit = Callable[[str, Mapping[str, str]], "str | None"]
"""(client name, its Join capabilities) -> why it may not join (None: welcome). E.g. a device
whose base model differs from the server's (fedkit/peft/join.py)."""

_Result = tuple[Reply | None, str, Any]  # (reply or None, why not, accepted)

PROTOCOL = "fedkit.v1"
_SHUTDOWN = object()
_REPLACED = object()
_HEADER_SLACK = 64 * 1024  # room for a chunk's header inside one message
_CLOSED_MEMORY = 100_000  # task ids of closed rounds remembered to tell "stale" from "unknown"
_SPLIT_OPEN_S = 30.0  # a Split stream must send its SplitOpen within this time
_END_WAIT_S = 1.0  # how long a finished reply stream may take to half-close


def chunk_size(max_message_bytes: int, chunk_bytes: int | None = None) -> int:
    """A chunk size that, with its header, fits one message of ``max_message_bytes``."""
    limit = max_message_bytes - _HEADER_SLACK
    if limit < 1024:
        raise ValueError(f"max_message_bytes={max_message_bytes} is too small")
    return min(chunk_bytes or DEFAULT_CHUNK_BYTES, limit)


def server_options(max_message_bytes: int, window_bytes: int = WINDOW_BYTES) -> list[tuple[str, Any]]:
    """Channel arguments: message limits, keepalive that tolerates idle devices behind NAT, and
    fixed flow-control windows (``window_bytes`` per stream) instead of gRPC's BDP probing:
    its PINGs and window growth depend on timing, so no byte count could predict them
    (:mod:`fedkit.transport.overhead`); a fixed window as large as the biggest valid reply
    keeps throughput and bounds what a client may push ahead of the server's reads."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", window_bytes),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
    ]


@dataclass(eq=False)
class _Session:
    name: str
    session_id: str
    peer: str
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    pending: set[str] = field(default_factory=set)
    joined_at: float = field(default_factory=time.monotonic)
    alive: Callable[[], bool] = lambda: True
    """Whether the session's Join stream is still open (its RPC context is not done)."""
    streams: int = 0
    """Reply streams of this session being received now (capped by ``max_reply_streams``)."""
    pushes: int = 0
    """Reply calls of this session so far (the first one's headers cost more on the wire)."""


@dataclass(eq=False)
class _Outgoing:
    task: Task


@dataclass(eq=False)
class _Pending:
    task: Task
    session: _Session
    future: asyncio.Future[_Result]
    claimed: bool = False  # a reply to it is being checked: a concurrent duplicate is refused


class _Hub:
    """Session and task bookkeeping. Touched only from the event loop thread."""

    def __init__(self, max_sessions: int | None = None) -> None:
        self.max_sessions = max_sessions
        self.sessions: dict[str, _Session] = {}
        self.by_id: dict[str, _Session] = {}
        self.pending: dict[str, _Pending] = {}
        self.closed: OrderedDict[str, tuple[int, str]] = OrderedDict()  # task id -> (round, why)
        self.split_streams: set[str] = set()  # task ids with an open Split stream (one each)
        self.done = False

    def open(
        self, name: str, peer: str, proven: bool = False, alive: Callable[[], bool] | None = None
    ) -> _Session:
        """A new session for ``name``. Rule for a name that already has a live session: the
        newest join wins only with proof of possession (``proven``: its mutual-TLS certificate
        was verified for that name); otherwise it is refused with ALREADY_EXISTS until the old
        session ends (a stale stream of a device that vanished ends when keepalive notices),
        so a replayed name + token cannot evict the real device. Takeovers log a warning."""
        old = self.sessions.get(name)
        if old is None and self.max_sessions is not None and len(self.sessions) >= self.max_sessions:
            raise TransportError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server is full: {len(self.sessions)} of {self.max_sessions} sessions in use",
            )
        if old is not None and old.alive():
            if not proven:
                raise TransportError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"client {name!r} already has a live session (from {old.peer}); a second "
                    "join needs that client's certificate (mutual TLS) or must wait until it ends",
                )
            log.warning(
                "client %s: session %s from %s taken over by a join from %s (certificate verified)",
                name, old.session_id, old.peer, peer,
            )
        if old is not None:
            self.close(old)
            old.outbox.put_nowait(_REPLACED)
        s = _Session(name, secrets.token_hex(16), peer)
        if alive is not None:
            s.alive = alive
        self.sessions[name] = s
        self.by_id[s.session_id] = s
        return s

    def close(self, s: _Session) -> None:
        if self.sessions.get(s.name) is s:
            del self.sessions[s.name]
        self.by_id.pop(s.session_id, None)
        for tid in s.pending:
            p = self.pending.get(tid)
            if p is not None and not p.future.done():
                log.info("client %s disconnected with task %s open", s.name, tid)
                p.future.set_result((None, f"client {s.name} disconnected", None))
        s.pending.clear()

    def remember_closed(self, tid: str, rnd: int, why: str) -> None:
        self.closed[tid] = (rnd, why)
        while len(self.closed) > _CLOSED_MEMORY:
            self.closed.popitem(last=False)

    def check_header(self, name: str, h: pb.ReplyHeader) -> _Pending:
        """The open task a reply header answers, or the status explaining why not."""
        if h.client != name:
            raise TransportError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"reply names client {shorten(h.client)} but the caller is {name!r}",
            )
        s = self.by_id.get(h.session_id)
        if s is None or s.name != name:
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {shorten(h.session_id)} of client {name!r} is not current; rejoin",
            )
        p = self.pending.get(h.task_id)
        if p is None:
            if h.task_id in self.closed:
                rnd, why = self.closed[h.task_id]
                if why == "answered":
                    raise TransportError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"task {shorten(h.task_id)} was already answered (its reply was accepted)",
                    )
                raise TransportError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"task {shorten(h.task_id)} of round {rnd} is closed ({why}); a task takes one "
                    "reply, and a refused reply uses it up",
                )
            raise TransportError(
                grpc.StatusCode.NOT_FOUND, f"unknown task {shorten(h.task_id)} (round {h.round})"
            )
        if p.task.client != name:
            raise TransportError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"task {h.task_id!r} was sent to {p.task.client!r}, not {name!r}",
            )
        if h.round != p.task.round:
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"reply to task {h.task_id!r} is for round {h.round}, "
                f"but the task belongs to round {p.task.round}",
            )
        if p.future.done():
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task {shorten(h.task_id)} is closed; a task takes one reply, and a refused reply uses it up",
            )
        return p

    def check_split_open(self, name: str, o: pb.SplitOpen) -> _Pending:
        """The open task a SplitOpen binds its stream to, or the status saying why not; on
        success the task counts as having its one stream (release with ``split_streams``)."""
        tid = o.task_id
        s = self.by_id.get(o.session_id)
        if s is None or s.name != name:
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {shorten(o.session_id)} of client {name!r} is not current; rejoin",
            )
        p = self.pending.get(tid)
        if p is None:
            if tid in self.closed:
                rnd, why = self.closed[tid]
                raise TransportError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"task {tid!r} of round {rnd} is closed ({why}); no split stream opens for it",
                )
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"unknown task {shorten(tid)} (round {o.round}): no open task has that id",
            )
        if p.task.client != name:
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION, f"task {tid!r} was not sent to {name!r}"
            )
        if o.round != p.task.round:
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"split stream for task {tid!r} names round {o.round}, "
                f"but the task belongs to round {p.task.round}",
            )
        if p.future.done():
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION, f"task {tid!r} is closed ({_why_closed(p)})"
            )
        if tid in self.split_streams:
            raise TransportError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"task {tid!r} already has an open split stream (one per task)",
            )
        self.split_streams.add(tid)
        return p


def _why_closed(p: _Pending) -> str:
    """Why a settled task closed, in words (its future is done)."""
    if p.future.cancelled():
        return "past its deadline"
    reply, reason, _ = p.future.result()
    return "answered" if reply is not None else reason[:200]


_SPLIT_CODES = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class _SplitRpc:
    """One Split stream's server side: runs endpoint calls in the split pool, in order, and
    tells the endpoint exactly once that the stream ended (after any call still running)."""

    def __init__(self, endpoint: SplitEndpoint, pool: concurrent.futures.Executor, name: str) -> None:
        self.endpoint, self.pool, self.name = endpoint, pool, name
        self.tid: str | None = None  # set once endpoint.open succeeded
        self.running: concurrent.futures.Future[Any] | None = None  # the latest call
        self.closed = False

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the pool; SplitRefused becomes the status its code names."""
        from fedkit.split.wire import SplitRefused

        self.running = self.pool.submit(fn, *args)
        try:
            return await asyncio.wrap_future(self.running)
        except SplitRefused as e:
            code = _SPLIT_CODES.get(e.code, grpc.StatusCode.INVALID_ARGUMENT)
            raise TransportError(code, str(e)) from None

    def open(self, tid: str) -> int:
        self.endpoint.open(self.name, tid)
        self.tid = tid
        return int(self.endpoint.max_frame_bytes())

    def exchange(self, frame: SplitFrame) -> SplitFrame | None:
        assert self.tid is not None
        return self.endpoint.exchange(self.name, self.tid, frame)

    def close(self, reason: str) -> concurrent.futures.Future[None] | None:
        """Tell the endpoint (in the pool, after a call still running) if its open succeeded;
        never raises. The first call does it; the future says when it is done."""
        if self.closed:
            return None
        self.closed = True
        running = self.running

        def run() -> None:
            if running is not None:
                concurrent.futures.wait([running])
            tid = self.tid
            if tid is None:
                return
            try:
                self.endpoint.close(self.name, tid, reason)
            except Exception:  # noqa: BLE001  (an endpoint bug must not kill the server)
                log.exception("split endpoint failed to close task %s of %s", tid, self.name)

        try:
            return self.pool.submit(run)
        except RuntimeError:  # the pool is shutting down: close here
            run()
            return None

    async def closed_by(self, reason: str) -> None:
        """:meth:`close`, returning once the endpoint has heard it (before the status goes).

        Shielded: a client that dies now cancels this RPC's coroutine, and a cancelled wrapper
        would cancel the queued close with it, so the endpoint would never hear."""
        done = self.close(reason)
        if done is not None:
            await asyncio.shield(asyncio.wrap_future(done))


class _Servicer(pb_grpc.FedKitServicer):
    def __init__(self, srv: GrpcServer) -> None:
        self.srv = srv
        self.hub = srv._hub

    async def _authenticate(self, context: grpc.aio.ServicerContext, claimed: str | None) -> str:
        name, token = parse_metadata(context.invocation_metadata())
        problem = None
        if claimed is not None and name is not None and name != claimed:
            problem = f"metadata names client {shorten(name)} but it joins as {shorten(claimed)}"
        name = name or claimed
        if problem is None and (not name or len(name) > 256 or not name.isprintable()):
            problem = f"missing or invalid client name {shorten(name)}"
        if problem is None and self.srv.tls is not None and self.srv.tls.mutual:
            cn = peer_common_name(context.auth_context())
            if cn != name:
                problem = f"client certificate CN {shorten(cn)} does not match client name {name!r}"
        if problem is None and self.srv.auth is not None:
            try:
                self.srv.auth.check(name or "", token)
            except AuthError as e:
                problem = str(e)
        if problem is not None:
            problem = clip(problem)
            log.warning("UNAUTHENTICATED %s from %s: %s", _method(context), context.peer(), problem)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        assert name is not None
        return name

    async def Join(  # noqa: N802  (gRPC method name)
        self, request: pb.JoinRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerMessage]:
        name = await self._authenticate(context, request.name)
        if request.protocol and request.protocol != PROTOCOL:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"client speaks {shorten(request.protocol)}; this server speaks {PROTOCOL!r}",
            )
        refusal = None if self.srv.admit is None else self.srv.admit(name, dict(request.capabilities))
        if refusal is not None:
            log.warning("refused join of %s from %s: %s", name, context.peer(), refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, clip(refusal))
        if self.hub.done:
            yield pb.ServerMessage(shutdown=pb.Shutdown(reason="experiment is done"))
            return
        proven = self.srv.tls is not None and self.srv.tls.mutual  # CN == name was checked
        try:
            s = self.hub.open(name, context.peer(), proven, alive=lambda: not context.done())
        except TransportError as e:
            log.warning("refused join of %s from %s: %s", name, context.peer(), e.message)
            await context.abort(e.code, e.message)
        log.info("client %s joined from %s (session %s...)", name, s.peer, s.session_id[:8])
        srv = self.srv
        wire = srv.wire
        getter: asyncio.Future[Any] | None = None
        try:
            welcome = pb.ServerMessage(
                welcome=pb.Welcome(
                    session_id=s.session_id,
                    max_message_bytes=srv.max_message_bytes,
                    max_payload_bytes=srv.max_payload_bytes,
                    chunk_bytes=srv.chunk_bytes,
                    heartbeat_s=srv.heartbeat_s,
                )
            )
            wire.up(overhead.join_up(context.invocation_metadata(), request.ByteSize()))
            wire.down(overhead.join_down(welcome.ByteSize()))
            yield welcome
            while True:
                # Keep one pending get across heartbeats: cancelling a get that just completed
                # (wait_for on Python < 3.12) could silently drop a task.
                getter = getter or asyncio.ensure_future(s.outbox.get())
                await asyncio.wait((getter,), timeout=srv.heartbeat_s)
                if not getter.done():
                    beat = pb.ServerMessage(heartbeat=pb.Heartbeat(server_time=time.time()))
                    self._sent(wire, [beat.ByteSize()])
                    yield beat
                    continue
                item, getter = getter.result(), None
                if item is _SHUTDOWN:
                    bye = pb.ServerMessage(shutdown=pb.Shutdown(reason="experiment is done"))
                    wire.down(overhead.message(bye.ByteSize()) + overhead.status())
                    yield bye
                    return
                if item is _REPLACED:
                    await context.abort(
                        grpc.StatusCode.ABORTED, f"session replaced by a newer join of {name!r}"
                    )
                if item.task.task_id not in s.pending:
                    continue  # its round closed before we got to send it
                for msg in _task_messages(item.task, srv.chunk_bytes):
                    self._sent(wire, [msg.ByteSize()])
                    yield msg
        finally:
            if getter is not None:
                getter.cancel()
            self.hub.close(s)
            log.info("client %s left (session %s...)", name, s.session_id[:8])

    @staticmethod
    def _sent(wire: overhead.WireCount, sizes: list[int]) -> None:
        """Count ServerMessages sent on a Join stream and the client's flow control for them."""
        recv, send = overhead.receipt(sizes)
        wire.down(overhead.task_down(sizes) + send)
        wire.up(recv)

    async def _reply_caller(self, context: grpc.aio.ServicerContext, h: pb.ReplyHeader | None) -> str:
        """Who pushes a reply. The session id of a Join is a 128-bit secret handed over that
        authenticated stream, so a reply quoting a live session needs no credentials of its
        own (fedkit clients send none: no name or token on every reply); with mutual TLS the
        certificate must still name the session's client. A caller that does send metadata is
        checked as on Join (so a wrong token is UNAUTHENTICATED, as before)."""
        name, token = parse_metadata(context.invocation_metadata())
        if name is not None or token is not None:
            return await self._authenticate(context, None)
        if h is None:
            return "?"  # no header, no metadata: refused as malformed, nothing learnt
        s = self.hub.by_id.get(h.session_id)
        if s is None:  # not UNAUTHENTICATED: a client whose server restarted must rejoin, not quit
            raise TransportError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {shorten(h.session_id[:8])}... is not current; rejoin",
            )
        if self.srv.tls is not None and self.srv.tls.mutual:
            cn = peer_common_name(context.auth_context())
            if cn != s.name:
                problem = clip(f"client certificate CN {shorten(cn)} does not match session client {s.name!r}")
                log.warning("UNAUTHENTICATED %s from %s: %s", _method(context), context.peer(), problem)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        return s.name

    async def PushReply(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ReplyChunk], context: grpc.aio.ServicerContext
    ) -> pb.Ack:
        srv = self.srv
        r = Reassembler(srv.max_payload_bytes, "reply")
        tid, name = "?", "?"
        p: _Pending | None = None  # the open task this stream answers, once identified
        owner = False  # this stream claimed the task (its reply is the one being checked)
        s: _Session | None = None  # the session whose stream budget this stream holds
        wire = srv.wire
        wire.up(overhead.push_start(context.invocation_metadata()))
        chunks = request_iterator.__aiter__()
        try:
            while not r.done:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                n = chunk.ByteSize()
                recv, send = overhead.receipt([n])
                wire.up(overhead.message(n) + send)
                wire.down(recv)
                if r.header is None:
                    header = chunk.header if chunk.HasField("header") else None
                    name = await self._reply_caller(context, header)
                    r.what = f"reply from {name!r}"
                    if header is None:
                        raise TransportError(grpc.StatusCode.INVALID_ARGUMENT, f"{r.what}: first chunk has no header")
                    # which task first, so any refusal below can settle it
                    tid = header.task_id
                    r.what = f"reply from {name!r} to task {shorten(tid)}"
                    p = self.hub.check_header(name, header)
                    s = p.session
                    if s.pushes == 0:
                        wire.up(overhead.FIRST_PUSH_UP)
                        wire.down(overhead.FIRST_PUSH_DOWN)
                    s.pushes += 1
                    if s.streams >= srv.max_reply_streams:
                        s = None
                        raise TransportError(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"client {name!r} already has {srv.max_reply_streams} reply streams open",
                        )
                    s.streams += 1
                elif p is not None and p.future.done():
                    # its task closed (deadline, disconnect, another reply): stop buffering now
                    raise TransportError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"task {tid!r} closed while its reply was streaming; a task takes one reply",
                    )
                r.feed(chunk)
            if r.header is None:
                name = await self._reply_caller(context, None)
                raise TransportError(grpc.StatusCode.INVALID_ARGUMENT, "empty reply stream")
            await self._end_of_stream(chunks, tid)
            wire.up(overhead.PUSH_END)
            reply = reply_from_proto(
                r.header, r.encoded() if r.header.has_update else r.payload()
            )
            p = self.hub.check_header(name, r.header)  # the round may have closed meanwhile
            accepted = None
            if p.claimed:
                raise TransportError(
                    grpc.StatusCode.ALREADY_EXISTS, f"another reply to task {tid!r} is being checked"
                )
            p.claimed = owner = True
            if self.srv.validate is not None:
                loop = asyncio.get_running_loop()
                try:
                    accepted = await loop.run_in_executor(None, self.srv.validate, p.task, reply)
                except ValueError as e:
                    raise TransportError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"reply to task {shorten(tid)} rejected: {e}"
                    ) from None
                p = self.hub.check_header(name, r.header)
            p.future.set_result((reply, "", accepted))
            ack = pb.Ack(task_id=tid)
            wire.down(overhead.reply_ok(ack.ByteSize()))
            return ack
        except TransportError as e:
            message = clip(e.message)  # it may quote what the client sent
            log.warning("rejected reply from %s (task %s): %s: %s", name, shorten(tid), e.code.name, message)
            if p is not None and not p.future.done() and (owner or not p.claimed):
                # answered but refused: the round need not wait for it, and the task is used up
                p.future.set_result((None, f"reply refused: {message}", None))
            wire.down(overhead.reply_refused(message))
            await context.abort(e.code, message)
            raise  # unreachable: abort raises
        finally:
            if s is not None:
                s.streams -= 1

    async def _end_of_stream(self, chunks: AsyncIterator[pb.ReplyChunk], tid: str) -> None:
        """Wait (briefly) for the client to half-close after its last chunk: data after
        ``last`` is refused, and answering only then spares the stream a reset."""
        try:
            extra = await asyncio.wait_for(chunks.__anext__(), _END_WAIT_S)
        except (StopAsyncIteration, asyncio.TimeoutError):
            return
        self.srv.wire.up(overhead.message(extra.ByteSize()))
        raise TransportError(
            grpc.StatusCode.INVALID_ARGUMENT, f"reply to task {shorten(tid)}: chunk after the last one"
        )

    async def Split(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SplitMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SplitMessage]:
        srv = self.srv
        if srv.split is None or srv._split_pool is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server does not serve split learning")
        assert srv.split is not None and srv._split_pool is not None
        name = await self._authenticate(context, None)
        rpc = _SplitRpc(srv.split, srv._split_pool, name)
        messages = request_iterator.__aiter__()
        tid, bound = "?", False
        reason = "stream cancelled (client disconnected or server stopping)"
        try:
            first = await _next_message(messages, None, _SPLIT_OPEN_S)
            if first is not None:
                srv.wire.up(overhead.message(first.ByteSize()))
            if first is None or first.WhichOneof("body") != "open":
                raise TransportError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a Split stream must start with SplitOpen (within {_SPLIT_OPEN_S:g} s)",
                )
            tid = first.open.task_id
            p = self.hub.check_split_open(name, first.open)
            bound = True
            cap = await rpc.call(rpc.open, tid)
            what = f"split stream of {name!r} for task {tid!r}"
            up = SplitAssembler(cap, what, ordered=True)
            while True:
                msg = await _next_message(messages, p.future)
                if msg is not None:
                    srv.wire.up(overhead.message(msg.ByteSize()))
                if p.future.done():
                    raise TransportError(
                        grpc.StatusCode.FAILED_PRECONDITION, f"task {tid!r} is closed ({_why_closed(p)})"
                    )
                if msg is None:
                    raise TransportError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{what}: stream ended without SplitClose"
                    )
                kind = msg.WhichOneof("body")
                if kind == "close":
                    if up.busy:
                        raise TransportError(
                            grpc.StatusCode.INVALID_ARGUMENT, f"{what}: SplitClose inside a batch"
                        )
                    why = msg.close.reason
                    reason = f"client gave up: {shorten(why)}" if why else ""
                    await rpc.closed_by(reason)  # OK below means the endpoint has heard it
                    return
                if kind not in ("activations", "gradients"):
                    raise TransportError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"{what}: unexpected {kind or 'empty'} message"
                    )
                frame = up.feed(kind, getattr(msg, kind))
                if frame is None:
                    continue
                out = await rpc.call(rpc.exchange, frame)
                if out is not None:
                    for m in split_messages(out, srv.chunk_bytes):
                        srv.wire.down(overhead.message(m.ByteSize()))
                        yield m
        except TransportError as e:
            message = clip(e.message)  # it may quote what the client sent
            reason = f"{e.code.name}: {message}"
            log.warning("split stream of %s (task %s) refused: %s", name, shorten(tid), reason)
            await rpc.closed_by(reason)
            await context.abort(e.code, message)
        except Exception as e:
            reason = clip(f"server error: {type(e).__name__}: {e}")
            log.exception("split stream of %s (task %s) failed", name, shorten(tid))
            await rpc.closed_by(reason)
            await context.abort(grpc.StatusCode.INTERNAL, f"split step failed: {reason}")
        finally:
            if bound:
                self.hub.split_streams.discard(tid)
            rpc.close(reason)


async def _next_message(
    messages: AsyncIterator[pb.SplitMessage],
    closed: asyncio.Future[Any] | None,
    timeout: float | None = None,
) -> pb.SplitMessage | None:
    """The next request; None at its end, or at once when ``closed`` is done first or
    ``timeout`` seconds pass."""
    nxt = asyncio.ensure_future(messages.__anext__())
    try:
        waits = (nxt,) if closed is None else (nxt, closed)
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not nxt.done():
            return None
        return await nxt
    except StopAsyncIteration:
        return None
    finally:
        nxt.cancel()


def _method(context: grpc.aio.ServicerContext) -> str:
    with contextlib.suppress(Exception):
        return context._rpc_event.call_details.method.decode()  # type: ignore[attr-defined]
    return "rpc"


def _task_messages(task: Task, chunk_bytes: int) -> Iterator[pb.ServerMessage]:
    """ServerMessages of one task, built in place (no extra copy of each chunk)."""
    header = task_to_proto(task, task.params.nbytes)
    for off, data, last in _slices(task.params, chunk_bytes):
        msg = pb.ServerMessage()
        c = msg.task
        if off == 0:
            c.header.CopyFrom(header)
        c.offset = off
        c.data = data
        c.last = last
        yield msg


class GrpcLink:
    """The :class:`fedkit.runtime.link.Link` over a :class:`GrpcServer` (real time)."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server

    def clients(self) -> Sequence[ClientId]:
        """Names of clients with an open session, sorted."""
        return self._server._call(lambda hub: sorted(hub.sessions))

    def now(self) -> float:
        """Seconds since the server was made."""
        return time.monotonic() - self._server._t0

    def send(self, tasks: Sequence[Task]) -> None:
        """Queue each task on its client's stream; a client that is not connected settles at
        once, replyless."""
        self._server._send(tasks)

    def arrivals(self, until: float | None) -> Iterator[Arrival]:
        """Settled tasks as they settle: a reply that passed every check, or None with the
        reason (refused, disconnected, not connected)."""
        return self._server._arrivals(until)

    def cancel(self, task_ids: Iterable[str]) -> None:
        self._server._cancel(list(task_ids))

    def wire_bytes(self) -> tuple[int, int]:
        """(down, up) bytes of the whole exchange on the wire so far, as a counting TCP proxy
        would see them (TLS records excepted): see :mod:`fedkit.transport.overhead`."""
        return self._server.wire.totals()

    def close(self) -> None:
        """End the experiment: tell clients they are done, then stop the server."""
        self._server.shutdown_clients()
        self._server.stop()


class GrpcServer:
    """Serves the fedkit.v1 protocol; ``.link`` is what the round engine talks to.

    Plaintext needs ``insecure=True`` and is logged as a warning; otherwise pass ``tls``.
    ``max_message_bytes`` bounds one gRPC message, ``max_payload_bytes`` one reassembled reply
    (larger ones are refused with RESOURCE_EXHAUSTED before they are buffered). ``validate``
    sees every reply that answers an open task, error replies included, in a worker thread.
    ``max_sessions`` caps concurrent sessions (joins beyond it get RESOURCE_EXHAUSTED and
    retry); with ``auth`` it bounds Sybil joins on plaintext too, where tokens are the only
    enrolment. ``split`` serves the ``Split`` stream of open split tasks (None: UNIMPLEMENTED);
    its calls run in a pool of ``split_threads`` worker threads. ``admit`` decides from a Join's
    capabilities whether the client may join (refused: PERMISSION_DENIED with its reason). ``max_reply_streams`` caps the reply streams one session may have open at once
    (a fedkit client needs one). ``max_message_bytes`` defaults to 16 MiB or, when smaller,
    ``max_payload_bytes`` plus header room, so one message never buffers more than a payload.

    Memory a hostile client can make the server hold: at most ``max_reply_streams`` x
    ``max_payload_bytes`` per session (a declared size above the cap is refused at the first
    chunk, and a stream whose task closed is refused at its next chunk), plus one decode
    bounded by the model (``validate``).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        *,
        tls: ServerTls | None = None,
        auth: Authenticator | None = None,
        max_message_bytes: int | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        chunk_bytes: int | None = None,
        heartbeat_s: float = 10.0,
        validate: Validator | None = None,
        insecure: bool = False,
        max_sessions: int | None = None,
        split: SplitEndpoint | None = None,
        split_threads: int | None = None,
        max_reply_streams: int = 2,
        admit: Admit | None = None,
    ) -> None:
        if tls is None and not insecure:
            raise ValueError("pass tls=ServerTls(...) or, for plaintext, insecure=True")
        if tls is not None and insecure:
            raise ValueError("tls and insecure=True contradict each other")
        if max_sessions is not None and max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.listen = listen
        self.tls = tls
        self.auth = auth
        self.insecure = insecure
        if max_reply_streams < 1:
            raise ValueError(f"max_reply_streams must be at least 1, got {max_reply_streams}")
        if max_message_bytes is None:
            max_message_bytes = min(DEFAULT_MAX_MESSAGE_BYTES, max_payload_bytes + 2 * _HEADER_SLACK)
        self.max_message_bytes = max_message_bytes
        self.max_reply_streams = max_reply_streams
        self.max_payload_bytes = max_payload_bytes
        self.chunk_bytes = chunk_size(max_message_bytes, chunk_bytes)
        self.heartbeat_s = heartbeat_s
        self.validate = validate
        self.admit = admit
        self.split = split
        self.split_threads = split_threads
        self._split_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # bytes on the wire (estimated from every message sent and received); updated on
        # the event loop, read by the engine between rounds
        self.wire = overhead.WireCount()
        self.port: int | None = None
        self._t0 = time.monotonic()
        self._settled: queue.Queue[Arrival] = queue.Queue()  # filled on the loop, read by the engine
        self._open: set[str] = set()  # engine thread: sent, not yet settled or cancelled
        self.link = GrpcLink(self)
        self._hub = _Hub(max_sessions)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None

    # ---- life cycle ------------------------------------------------------------------------

    def start(self) -> int:
        """Bind, start serving in a background thread, and return the bound port."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        _raise_fd_limit()
        if self.split is not None:
            self._split_pool = concurrent.futures.ThreadPoolExecutor(
                self.split_threads, thread_name_prefix="fedkit-split"
            )
        if self.insecure:
            log.warning(
                "serving PLAINTEXT gRPC on %s: updates and tokens travel unencrypted", self.listen
            )
        if self.auth is None and not (self.tls and self.tls.mutual):
            log.warning("no client authentication: any client may join under any name")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="fedkit-grpc-server", daemon=True
        )
        self._thread.start()
        try:
            self.port = ready.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            if self._split_pool is not None:
                self._split_pool.shutdown(wait=False)
                self._split_pool = None
            raise
        log.info("fedkit gRPC server listening on port %d", self.port)
        return self.port

    def _run(self, ready: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._astart(ready))
        except BaseException as e:  # noqa: BLE001  (reported to start())
            if not ready.done():
                ready.set_exception(e)
            loop.close()
            return
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self, ready: concurrent.futures.Future[int]) -> None:
        window = min(WINDOW_BYTES, max(64 << 10, self.max_payload_bytes))
        server = grpc.aio.server(options=server_options(self.max_message_bytes, window))
        pb_grpc.add_FedKitServicer_to_server(_Servicer(self), server)
        if self.tls is not None:
            port = server.add_secure_port(self.listen, self.tls.credentials())
        else:
            port = server.add_insecure_port(self.listen)
        if not port:
            raise OSError(f"could not bind {self.listen}")
        await server.start()
        self._server = server
        ready.set_result(port)

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (open streams are cancelled; clients will try to reconnect)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed() and self._server is not None:
            server = self._server
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(server.stop(grace), loop).result(grace + 10)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self._loop = self._server = None
        if self._split_pool is not None:  # lets the endpoint hear every stream's close
            self._split_pool.shutdown(wait=True)
            self._split_pool = None

    def __enter__(self) -> GrpcServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- engine-facing operations ----------------------------------------------------------

    def _call(self, fn: Callable[[_Hub], Any], timeout: float = 30.0) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("server is not running")

        async def run() -> Any:
            return fn(self._hub)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def clients(self) -> list[str]:
        return list(self.link.clients())

    def wait_for_clients(self, n: int, timeout: float) -> list[str]:
        """Block until ``n`` clients are connected; raise TimeoutError naming who is there."""
        end = time.monotonic() + timeout
        while True:
            names = self.clients()
            if len(names) >= n:
                return names
            if time.monotonic() >= end:
                raise TimeoutError(f"{len(names)} of {n} clients connected after {timeout} s")
            time.sleep(0.05)

    def shutdown_clients(self, timeout: float = 5.0) -> None:
        """Tell every client the experiment is done (they exit); later joins are told too."""
        if self._loop is None:
            return

        def mark(hub: _Hub) -> int:
            hub.done = True
            for s in hub.sessions.values():
                s.outbox.put_nowait(_SHUTDOWN)
            return len(hub.sessions)

        self._call(mark)
        end = time.monotonic() + timeout
        while self.clients() and time.monotonic() < end:
            time.sleep(0.02)

    def _send(self, tasks: Sequence[Task]) -> None:
        if self._loop is None:
            raise RuntimeError("server is not running")
        out = list(tasks)
        for task in out:
            task_to_proto(task, 0)  # fail here, in the caller, on a non-JSON config
        ids = [t.task_id for t in out]
        if not all(ids) or len(set(ids)) != len(ids) or any(t in self._open for t in ids):
            raise ValueError(f"task ids must be unique and new: {ids[:5]}")
        self._call(lambda hub: self._register(hub, out))
        self._open.update(ids)

    def _register(self, hub: _Hub, tasks: list[Task]) -> None:
        """On the loop: open each task and queue it on its client's stream."""
        reused = [t.task_id for t in tasks if t.task_id in hub.pending or t.task_id in hub.closed]
        if reused:
            raise ValueError(f"task ids must be unique and new; reused: {reused[:5]}")
        loop = asyncio.get_running_loop()
        for t in tasks:
            f: asyncio.Future[_Result] = loop.create_future()
            f.add_done_callback(functools.partial(self._settle, t))
            s = hub.sessions.get(t.client)
            if s is None:
                log.warning("task %s: client %s is not connected", t.task_id, t.client)
                f.set_result((None, f"client {t.client} is not connected", None))
                continue
            hub.pending[t.task_id] = _Pending(t, s, f)
            s.pending.add(t.task_id)
            s.outbox.put_nowait(_Outgoing(t))

    def _settle(self, task: Task, fut: asyncio.Future[_Result]) -> None:
        """On the loop, when a task's future resolves: close it and hand it to the engine."""
        p = self._hub.pending.pop(task.task_id, None)
        if p is not None:
            p.session.pending.discard(task.task_id)
        if fut.cancelled():
            self._hub.remember_closed(task.task_id, task.round, "past its deadline")
            return
        reply, reason, accepted = fut.result()
        self._hub.remember_closed(task.task_id, task.round, "answered" if reply else reason[:200])
        self._settled.put(Arrival(self.link.now(), task, reply, reason, accepted))

    def _arrivals(self, until: float | None) -> Iterator[Arrival]:
        while self._open:
            timeout = None if until is None else until - self.link.now()
            if timeout is not None and timeout <= 0:
                return
            try:
                a = self._settled.get(timeout=timeout)
            except queue.Empty:
                return
            if a.task.task_id in self._open:
                self._open.discard(a.task.task_id)
                yield a

    def _cancel(self, task_ids: list[str]) -> None:
        ids = [t for t in task_ids if t in self._open]
        self._open.difference_update(ids)

        def cancel(hub: _Hub) -> None:
            for tid in ids:
                p = hub.pending.get(tid)
                if p is not None and not p.future.done():
                    log.info("task %s: client %s missed the deadline", tid, p.task.client)
                    p.future.cancel()

        if ids and self._loop is not None:
            self._call(cancel)


def _raise_fd_limit() -> None:
    """Each connected client holds a socket: lift the soft descriptor limit to the hard one."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
