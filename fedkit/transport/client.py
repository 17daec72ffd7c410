"""The device side: join, receive tasks, answer them, survive server restarts.

Why client-initiated: devices sit behind NAT, so they dial out and keep one stream open on which
the server pushes tasks. When the connection drops (server restart, network change) the client
rejoins under the same name with exponential backoff and jitter, so a fleet does not stampede a
restarting server. It returns when the server says the experiment is done or ``stop`` is set;
credentials the server refuses are fatal (retrying cannot fix them).

A misconfigured client (wrong CA, plaintext against TLS, missing client certificate, wrong host
or port) never joins: each new reason is logged at WARNING, and after ``wait_s`` seconds without
a session the client gives up with ``ConnectionError`` (``fedkit client`` exits 1). Being
replaced by a newer join under our name (ABORTED), or refused because our previous session is
still live on the server (ALREADY_EXISTS: it lingers until keepalive notices it is dead), is
logged and retried with backoff, never final.

Split learning: a :class:`SplitDialer` is the ``SplitConnect`` a client host uses to open a
split task's ``Split`` stream; ``run_client(..., split=dialer)`` binds it to each session
(channel, credentials, session id), so the stream rides the connection the task arrived on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport._proto import fedkit_pb2_grpc as pb_grpc
from fedkit.transport.security import ClientTls, client_metadata
from fedkit.transport.serde import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    WINDOW_BYTES,
    Reassembler,
    SplitAssembler,
    TransportError,
    reply_chunks,
    split_messages,
    task_from_proto,
)
from fedkit.types import Encoded, Reply, Task

if TYPE_CHECKING:  # imported where used at run time: fedkit.split's package imports torch
    from fedkit.split.wire import SplitFrame

log = logging.getLogger("fedkit.transport")

PROTOCOL = "fedkit.v1"
DEFAULT_WAIT_S = 300.0
"""Seconds a client keeps trying to join before it gives up (``fedkit client --wait-s``)."""
_HINT_CLOSED = (
    " (the server hung up during set-up: plaintext against a TLS server, or a server that "
    "requires a client certificate: give --ca, and --cert/--key for mutual TLS)"
)
_FATAL = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_REJECTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


class _Reconnect(Exception):
    """The session is unusable (protocol error); drop it and join again."""


def channel_options(
    max_message_bytes: int, server_name: str | None = None
) -> list[tuple[str, Any]]:
    """Message limits, keepalive (dead-server detection behind NAT), own connection per client."""
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.bdp_probe", 0),  # fixed windows: countable framing (see server_options)
        ("grpc.http2.lookahead_bytes", WINDOW_BYTES),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


def make_channel(
    address: str,
    *,
    tls: ClientTls | None = None,
    insecure: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """A channel to the server: TLS unless ``insecure=True`` was asked for explicitly."""
    if tls is None and not insecure:
        raise ValueError("pass tls=ClientTls(...) or, for plaintext, insecure=True")
    if tls is not None and insecure:
        raise ValueError("tls and insecure=True contradict each other")
    if tls is None:
        return grpc.insecure_channel(address, options=channel_options(max_message_bytes))
    return grpc.secure_channel(
        address, tls.credentials(), options=channel_options(max_message_bytes, tls.server_name)
    )


def run_client(
    address: str,
    client_fn: Callable[[Task], Reply],
    *,
    name: str,
    token: str | None = None,
    tls: ClientTls | None = None,
    insecure: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    capabilities: Mapping[str, str] | None = None,
    stop: threading.Event | None = None,
    backoff: tuple[float, float] = (0.2, 5.0),
    max_attempts: int | None = None,
    wait_s: float | None = DEFAULT_WAIT_S,
    split: SplitDialer | None = None,
) -> None:
    """Serve tasks from the server at ``address`` until it says done or ``stop`` is set.

    ``client_fn`` runs each task; an exception becomes a reply with ``error`` set. After a lost
    connection the client waits ``min(backoff[1], backoff[0] * 2**k)`` scaled by a random factor
    in [0.5, 1] and rejoins. It raises ConnectionError, naming the last failure, after
    ``max_attempts`` consecutive failed joins or ``wait_s`` seconds without a session (since the
    start or the last session; None: retry until ``stop``). UNAUTHENTICATED /
    PERMISSION_DENIED raise ``grpc.RpcError``. Being replaced (ABORTED) or refused as a
    duplicate (ALREADY_EXISTS) is retried. ``split`` (the ``connect`` given to the client
    host) is bound to each session while it lasts.
    """
    if tls is None and not insecure:
        raise ValueError("pass tls=ClientTls(...) or, for plaintext, insecure=True")
    if wait_s is not None and not wait_s > 0:
        raise ValueError(f"wait_s must be positive or None (wait forever), got {wait_s!r}")
    stop = stop or threading.Event()
    md = client_metadata(name, token)
    failures = 0
    since = time.monotonic()
    warned: str | None = None
    while not stop.is_set():
        joined: list[bool] = []
        contested = False
        channel = make_channel(
            address, tls=tls, insecure=insecure, max_message_bytes=max_message_bytes
        )
        try:
            if _session(
                channel, client_fn, name, md, capabilities or {}, max_payload_bytes, chunk_bytes,
                stop, joined, split,
            ):
                return
            reason = "stream ended"
        except grpc.RpcError as e:
            if stop.is_set():
                return
            code = e.code() if hasattr(e, "code") else None
            if code in _FATAL:
                log.error("client %s: server refused us: %s", name, e.details())
                raise
            reason = f"{code.name if code else 'error'}: {e.details() if hasattr(e, 'details') else e}"
            if "Socket closed" in reason:
                reason += _HINT_CLOSED
            contested = code in (grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS)
        except _Reconnect as e:
            reason = str(e)
        finally:
            channel.close()
        if stop.is_set():
            return
        now = time.monotonic()
        if joined:  # the wait clock restarts when a session ends
            since, warned = now, None
        # a contested name backs off instead of ping-ponging with its twin
        failures = failures + 1 if contested or not joined else 1
        if contested:
            log.warning("client %s: %s; retrying", name, reason)
            warned = reason.split(":", 1)[0]
        if max_attempts is not None and failures >= max_attempts:
            raise ConnectionError(f"client {name}: {failures} failed attempts to join {address}: {reason}")
        if wait_s is not None and now - since >= wait_s:
            raise ConnectionError(
                f"client {name}: could not join {address} for {now - since:.0f} s "
                f"(--wait-s {wait_s:g}); last error: {reason}"
            )
        delay = min(backoff[1], backoff[0] * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
        if wait_s is not None:
            delay = min(delay, max(0.0, since + wait_s - now))
        kind = reason.split(":", 1)[0]
        level = logging.INFO if joined or kind == warned else logging.WARNING
        warned = warned if joined else kind
        log.log(level, "client %s: %s; rejoining %s in %.2f s", name, reason, address, delay)
        stop.wait(delay)


def _session(
    channel: grpc.Channel,
    client_fn: Callable[[Task], Reply],
    name: str,
    md: tuple[tuple[str, str], ...],
    capabilities: Mapping[str, str],
    max_payload_bytes: int,
    chunk_bytes: int,
    stop: threading.Event,
    joined: list[bool],
    split: SplitDialer | None = None,
) -> bool:
    """One session; True when the server said the experiment is done."""
    stub = pb_grpc.FedKitStub(channel)
    call = stub.Join(
        pb.JoinRequest(name=name, capabilities=dict(capabilities), protocol=PROTOCOL),
        metadata=md,
    )
    ended = threading.Event()
    watcher = threading.Thread(target=_cancel_on_stop, args=(stop, ended, call), daemon=True)
    watcher.start()
    try:
        messages: Iterator[pb.ServerMessage] = iter(call)
        first = next(messages, None)
        if first is None:
            raise _Reconnect("server closed the stream before welcoming us")
        if first.WhichOneof("body") == "shutdown":
            log.info("client %s: server says done (%s)", name, first.shutdown.reason)
            return True
        if first.WhichOneof("body") != "welcome":
            raise _Reconnect(f"expected a welcome, got {first.WhichOneof('body')}")
        w = first.welcome
        joined.append(True)
        chunk = min(chunk_bytes, w.chunk_bytes) if w.chunk_bytes else chunk_bytes
        log.info("client %s joined (session %s...)", name, w.session_id[:8])
        if split is not None:
            split.bind(stub, md, w.session_id, chunk, max_payload_bytes)
        reasm: Reassembler | None = None
        for msg in messages:
            kind = msg.WhichOneof("body")
            if kind == "heartbeat":
                continue
            if kind == "shutdown":
                log.info("client %s: server says done (%s)", name, msg.shutdown.reason)
                return True
            if kind != "task":
                continue  # newer servers may add messages; ignore what we do not know
            if reasm is None:
                reasm = Reassembler(max_payload_bytes, f"task for {name!r}")
            try:
                if not reasm.feed(msg.task):
                    continue
                header = reasm.header
            except TransportError as e:
                raise _Reconnect(f"bad task stream: {e.message}") from None
            bad: str | None = None
            payload: Encoded | bytes = b""
            try:
                payload = reasm.encoded() or b""
            except TransportError as e:
                bad = e.message
            reasm = None
            reply = _run_task(client_fn, header, payload, bad, name)
            del payload
            _push(stub, reply, w.session_id, chunk, name)
        return False
    finally:
        if split is not None:
            split.unbind()
        ended.set()
        call.cancel()


def _cancel_on_stop(stop: threading.Event, ended: threading.Event, call: Any) -> None:
    while not ended.wait(0.1):
        if stop.is_set():
            call.cancel()
            return


def _run_task(
    client_fn: Callable[[Task], Reply],
    header: pb.TaskHeader,
    payload: Encoded | bytes,
    bad: str | None,
    name: str,
) -> Reply:
    """Run one task; a malformed task or a raising client_fn becomes an error reply."""
    try:
        if bad is not None:
            raise TransportError(grpc.StatusCode.INVALID_ARGUMENT, bad)
        task = task_from_proto(header, payload)
    except TransportError as e:
        log.warning("client %s: %s", name, e.message)
        return Reply(task_id=header.task_id, client=name, round=header.round, error=e.message)
    try:
        return client_fn(task)
    except Exception as e:  # noqa: BLE001  (the server learns the client failed, and why)
        log.exception("client %s: task %s failed", name, task.task_id)
        return Reply(
            task_id=task.task_id, client=name, round=task.round, error=f"{type(e).__name__}: {e}"
        )


def _push(
    stub: pb_grpc.FedKitStub,
    reply: Reply,
    session_id: str,
    chunk_bytes: int,
    name: str,
) -> None:
    """Upload one reply. No credentials ride along: the session id (a secret the server
    handed over the authenticated Join) is the proof, which spares ~90 bytes of metadata the
    server would otherwise receive as HPACK literals on every reply."""
    try:
        stub.PushReply(reply_chunks(reply, chunk_bytes, session_id))
    except grpc.RpcError as e:
        if e.code() in _REJECTED:
            log.warning(
                "client %s: server rejected reply to task %s: %s: %s",
                name, reply.task_id, e.code().name, e.details(),
            )
            return
        raise


# ---- split learning: the client end of the Split stream ------------------------------------

_LINK_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
_GIVE_UP_WAIT_S = 10.0  # how long close(reason) waits for the server to hear it
_QUEUED = 64  # messages waiting for gRPC's flow control before send blocks (backpressure)
_END = object()


def _split_error(e: grpc.RpcError, what: str) -> Exception:
    """The server's status as :class:`~fedkit.split.wire.SplitRefused` (``code`` its lower-case
    name, the message its details); a lost link as ConnectionError."""
    from fedkit.split.wire import SplitRefused

    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    if code in _LINK_DOWN:
        return ConnectionError(f"{what}: {code.name}: {details}")
    return SplitRefused(details, code.name.lower())


class GrpcSplitStream:
    """The client end of one task's ``Split`` stream: a :class:`~fedkit.split.wire.SplitStream`.

    Requests go through a queue the gRPC call drains in its own thread, so ``send`` without a
    reply returns at once (it blocks only while 64 messages wait for HTTP/2 flow control: a
    server slower than the client slows the client down instead of filling its memory); a
    reply is read in the caller's thread. Every non-OK status the
    server ends the stream with is raised as ``SplitRefused(details, code)`` (e.g.
    ``invalid_argument``), by the ``send`` that waits for a reply or else by ``close``; a lost
    connection is ConnectionError. Use it as a context manager or call ``close``.
    """

    def __init__(
        self,
        stub: pb_grpc.FedKitStub,
        md: tuple[tuple[str, str], ...],
        session_id: str,
        task: Task,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_frame_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.task_id = task.task_id
        self._what = f"split stream of task {task.task_id!r}"
        self._chunk = chunk_bytes
        self._down = SplitAssembler(max_frame_bytes, f"reply on the {self._what}")
        self._queue: queue.Queue[Any] = queue.Queue(_QUEUED)
        self._queue.put(
            pb.SplitMessage(open=pb.SplitOpen(session_id=session_id, task_id=task.task_id, round=task.round))
        )
        self._closed = False
        self._surfaced = False  # the stream's failure was already raised to the caller
        self._call = stub.Split(self._requests(), metadata=md)
        self._call.add_done_callback(self._release)

    def _release(self, _: object) -> None:
        """The call ended: wake gRPC's sender thread if it waits for a request (when the queue
        is full it is not waiting: it takes the next one, sees the call ended and stops)."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_END)

    def _put(self, m: Any) -> None:
        """Queue one request; while the queue is full wait, unless the call has ended."""
        while True:
            try:
                self._queue.put(m, timeout=0.05)
                return
            except queue.Full:
                if self._call.done():
                    return

    def _requests(self) -> Iterator[pb.SplitMessage]:
        while (m := self._queue.get()) is not _END:
            yield m

    def _fail(self, e: Exception) -> Exception:
        self._surfaced = True
        self._call.cancel()  # _release wakes the sender
        return e

    def send(self, frame: SplitFrame, expect_reply: bool = True) -> SplitFrame | None:
        """Send one frame; with ``expect_reply`` wait for the server's reply to it."""
        if self._closed or self._surfaced:
            raise ConnectionError(f"{self._what} is closed")
        if not expect_reply and self._call.done():  # refused already: say so now
            self._finish()
            raise self._fail(ConnectionError(f"{self._what}: the server ended the stream"))
        for m in split_messages(frame, self._chunk):
            self._put(m)
        if not expect_reply:
            return None
        while True:
            try:
                msg = next(self._call)
            except StopIteration:
                raise self._fail(ConnectionError(
                    f"{self._what}: the server ended the stream without replying to step {frame.step}"
                )) from None
            except grpc.RpcError as e:
                raise self._fail(_split_error(e, self._what)) from None
            kind = msg.WhichOneof("body")
            if kind not in ("activations", "gradients"):
                continue  # newer servers may add messages; ignore what we do not know
            try:
                out = self._down.feed(kind, getattr(msg, kind))
            except TransportError as e:
                raise self._fail(ConnectionError(f"{self._what}: bad reply: {e.message}")) from None
            if out is None:
                continue
            if out.step != frame.step:
                raise self._fail(ConnectionError(
                    f"{self._what}: server replied to step {out.step} while step {frame.step} "
                    "waits (a frame sent without waiting was answered: scheme mismatch?)"
                ))
            return out

    def _finish(self) -> None:
        """Read to the end of the stream; raise the server's refusal, if any."""
        try:
            for msg in self._call:
                if msg.WhichOneof("body") in ("activations", "gradients"):
                    log.warning("%s: dropped a reply nobody waited for", self._what)
        except grpc.RpcError as e:
            raise self._fail(_split_error(e, self._what)) from None

    def close(self, reason: str = "") -> None:
        """End the stream. With an empty ``reason`` (done) wait for the server's verdict on every
        frame sent and raise its refusal; with a reason (giving up) tell the server why, wait
        briefly for it to hear, and raise nothing."""
        if self._closed:
            return
        self._closed = True
        if self._surfaced:
            return
        self._put(pb.SplitMessage(close=pb.SplitClose(reason=reason)))
        self._put(_END)
        if not reason:
            self._finish()
            return
        heard = threading.Event()
        self._call.add_done_callback(lambda _: heard.set())
        if not heard.wait(_GIVE_UP_WAIT_S):
            self._call.cancel()

    def __enter__(self) -> GrpcSplitStream:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close("" if exc is None else f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class _Bound:
    stub: pb_grpc.FedKitStub
    md: tuple[tuple[str, str], ...]
    session_id: str
    chunk_bytes: int
    max_frame_bytes: int


class SplitDialer:
    """The ``SplitConnect`` (fedkit/split/wire.py) of a gRPC client: ``dialer(task)`` opens the
    ``Split`` stream of ``task`` on the current session.

    ``run_client(..., split=dialer)`` binds it on each join and unbinds it when the session ends,
    so give the same object to the client host::

        dialer = SplitDialer()
        run_client(address, ClientHost(state, connect=dialer), name=..., split=dialer)

    Outside a session (or on a bare stub, after :meth:`bind`) calling it raises ConnectionError.
    """

    def __init__(self) -> None:
        self._bound: _Bound | None = None

    def bind(
        self,
        stub: pb_grpc.FedKitStub,
        md: tuple[tuple[str, str], ...],
        session_id: str,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_frame_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        """Open streams on this session from now on (``max_frame_bytes`` caps a reply)."""
        self._bound = _Bound(stub, md, session_id, chunk_bytes, max_frame_bytes)

    def unbind(self) -> None:
        self._bound = None

    def __call__(self, task: Task) -> GrpcSplitStream:
        b = self._bound
        if b is None:
            raise ConnectionError(f"no session to open the split stream of task {task.task_id!r} on")
        return GrpcSplitStream(b.stub, b.md, b.session_id, task, b.chunk_bytes, b.max_frame_bytes)
