"""Bytes on the wire: what a counting TCP proxy between client and server would see.

Why: payload bytes (``Encoded.nbytes``) leave out everything gRPC adds around them, and for a
compressed update of a small model that is most of the exchange (a 200-byte update costs ~500
bytes on the wire). fedkit reports both, per round and in total, and the ratios against both.

What is counted, per direction (down = server to client, up = client to server): the HTTP/2
connection preface and SETTINGS of each connection; HEADERS frames of every call (HPACK-coded
request headers with the custom metadata, response headers, trailers with the status message);
every gRPC message as DATA frames (9-byte frame header per 16 KiB frame, 5-byte message prefix
and the protobuf bytes: task and reply headers, chunk framing, payload); the WINDOW_UPDATE
frames the receiver returns; heartbeats and the Shutdown. Not counted: TCP/IP headers, and TLS
records (with TLS add ~22-29 bytes per record of up to 16 KiB plus ~4-6 KB of handshake per
connection: certificates); keepalive PINGs (17 bytes each way per 20-30 s idle).

gRPC exposes no byte counters, so these are *estimates from the exact message sizes*, with
constants measured on grpcio 1.85 (grpc-c 58) over loopback; tests/transport/test_wire_bytes.py
runs a counting proxy and holds the estimate within 2%. The in-process simulation charges the
very same functions for the same messages (:func:`exchange`), so the figures agree across modes.
HPACK detail that matters: gRPC indexes standard headers after their first use on a
connection but sends custom metadata (client name, bearer token) as literals on *every* call,
which is why fedkit clients send them only on Join and authenticate replies by their session.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport.serde import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    reply_to_proto,
    task_to_proto,
)
from fedkit.types import Reply, Task

FRAME = 9
"""HTTP/2 frame header."""
PREFIX = 5
"""gRPC length prefix of each message (compressed flag + u32 length)."""
MAX_FRAME = 16384
"""SETTINGS_MAX_FRAME_SIZE gRPC advertises: DATA frames carry at most this much."""
WINDOW_UPDATE = FRAME + 4

CONNECT_UP = 24 + (FRAME + 30) + FRAME
"""Client preface, its SETTINGS (5 settings) and its SETTINGS ack."""
CONNECT_DOWN = (FRAME + 18) + FRAME
"""Server SETTINGS (3 settings) and its SETTINGS ack."""
FIRST_REQUEST = 211
"""HPACK bytes of the standard request headers on a connection's first call (literals of
:path, :authority, user-agent, content-type, te, grpc-accept-encoding)."""
INDEXED_REQUEST = 8
"""HPACK bytes of the standard request headers once indexed (one byte each)."""
FIRST_RESPONSE = 78
INDEXED_RESPONSE = 3
TRAILERS = 16
"""HPACK bytes of response headers (first / later on a connection) and of OK trailers."""
FIRST_PUSH_UP = 34
"""Up: HPACK bytes a connection's first PushReply adds (its :path as a new literal)."""
FIRST_PUSH_DOWN = 14
"""Down: what the first OK trailers on a connection add over indexed ones."""
PUSH_END = FRAME + 2 * WINDOW_UPDATE
"""Up: END_STREAM of a reply call and the window updates its client sends with it."""
WINDOW_STEP = 4 << 20
"""Received bytes per extra WINDOW_UPDATE pair for a very large message: with fedkit's fixed
8 MiB windows (``serde.WINDOW_BYTES``) a message gets one update, a 2 MiB chunk included."""
_LARGE = WINDOW_STEP


def message(n: int) -> int:
    """Wire bytes of one gRPC message whose protobuf encoding has ``n`` bytes."""
    body = PREFIX + n
    return body + FRAME * max(1, -(-body // MAX_FRAME))


def _hpack_int(n: int, prefix: int = 7) -> int:
    limit = (1 << prefix) - 1
    if n < limit:
        return 1
    n -= limit
    size = 2
    while n >= 128:
        n >>= 7
        size += 1
    return size


def literal(key: str, value: str) -> int:
    """HPACK bytes of a header gRPC sends as a literal with a new name, never indexed."""
    k, v = len(key.encode()), len(value.encode())
    return 1 + _hpack_int(k) + k + _hpack_int(v) + v


def metadata_bytes(md: Iterable[tuple[str, str | bytes]] | None) -> int:
    """HPACK bytes of the custom metadata of one call (literals on every call)."""
    total = 0
    for key, value in md or ():
        if key in ("user-agent",):  # part of the standard headers
            continue
        total += literal(key, value if isinstance(value, str) else value.decode("latin-1"))
    return total


def join_up(md: Iterable[tuple[str, str | bytes]] | None, request_bytes: int) -> int:
    """Up: a new connection and its Join call (the connection's first headers, the request,
    and the stream and connection windows the client opens for the tasks to come)."""
    return CONNECT_UP + FRAME + FIRST_REQUEST + metadata_bytes(md) + message(request_bytes) + 2 * WINDOW_UPDATE


def join_down(welcome_bytes: int) -> int:
    """Down: the server's side of a new connection, Join's response headers and the Welcome."""
    return CONNECT_DOWN + FRAME + FIRST_RESPONSE + message(welcome_bytes) + WINDOW_UPDATE


def task_down(sizes: Iterable[int]) -> int:
    """Down: the ServerMessages of one task (or a heartbeat) on the Join stream."""
    return sum(message(n) for n in sizes)


def receipt(sizes: Iterable[int]) -> tuple[int, int]:
    """(receiver's, sender's) bytes of gRPC flow control for received messages of ``sizes``:
    the receiver's WINDOW_UPDATEs, one per message plus a stream and a connection update per
    :data:`WINDOW_STEP` of a larger one; nothing from the sender. fedkit turns gRPC's BDP
    probing off and fixes the windows instead (``server_options``): BDP's PINGs and window
    growth depend on timing, so no count could predict them."""
    recv = 0
    for n in sizes:
        k = -(-n // WINDOW_STEP)
        recv += WINDOW_UPDATE * (max(1, k) + (k if n > _LARGE else 0))
    return recv, 0


def push_start(md: Iterable[tuple[str, str | bytes]] | None) -> int:
    """Up: the request headers of a PushReply call (indexed, plus any custom metadata)."""
    return FRAME + INDEXED_REQUEST + metadata_bytes(md)


def status(message_text: str = "") -> int:
    """Trailers HEADERS frame of a finished call (status code and, if any, its message)."""
    return FRAME + TRAILERS + (literal("grpc-message", message_text) if message_text else 0)


def reply_ok(ack_bytes: int) -> int:
    """Down: what the server returns for an accepted reply (headers, Ack, trailers); flow
    control for the reply's messages comes from :func:`receipt`."""
    return FRAME + INDEXED_RESPONSE + message(ack_bytes) + status()


def reply_refused(why: str) -> int:
    """Down: what the server returns for a refused reply (trailers with the reason)."""
    return status(why)


@dataclass
class WireCount:
    """Running (down, up) byte estimate; updated on the server's event loop, read between
    rounds by the engine (plain ints: a read sees a consistent-enough value)."""

    sent: int = 0
    received: int = 0

    def down(self, n: int) -> None:
        self.sent += n

    def up(self, n: int) -> None:
        self.received += n

    def totals(self) -> tuple[int, int]:
        return self.sent, self.received


# ---- the same figures without a wire (in-process runs) ------------------------------------


def _varint_len(n: int) -> int:
    return max(1, -(-n.bit_length() // 7))


def _field(n: int) -> int:
    """Bytes of a length-delimited field (tag < 16) holding ``n`` bytes."""
    return 1 + _varint_len(n) + n


def chunk_messages(header_bytes: int, payload_bytes: int, chunk_bytes: int, wrapped: bool) -> list[int]:
    """Protobuf sizes of the chunk messages of one payload, computed without building them
    (no copy of the payload): header on the first, ``offset`` / ``data`` / ``last`` as
    :func:`fedkit.transport.serde.task_chunks` sets them; ``wrapped``: inside a
    ``ServerMessage`` (tasks), else a bare ``ReplyChunk``."""
    count = max(1, math.ceil(payload_bytes / chunk_bytes))
    out = []
    for i in range(count):
        lo = i * chunk_bytes
        n = min(chunk_bytes, payload_bytes - lo)
        size = (_field(header_bytes) if i == 0 else 0) + (1 + _varint_len(lo) if lo else 0)
        size += _field(n) if n else 0
        size += 2 if i == count - 1 else 0
        out.append(_field(size) if wrapped else size)
    return out


@dataclass
class InProcessWire:
    """What the gRPC transport would put on the wire for the same tasks and replies: a client
    joins (connection, Join, Welcome) at its first task, and every reply is one PushReply
    call, as a fedkit client sends it. Plugged into :class:`fedkit.sim.link.InProcessLink`.
    Joins carry a bearer token of ``token_chars`` characters (what ``fedkit certs`` issues;
    0: none). Differences from a real run, each under ~0.1 KB: heartbeats (none in simulated
    time), refused replies (counted as accepted), the Shutdown at the end."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    token_chars: int = 43
    joined: set[str] = field(default_factory=set)
    pushed: set[str] = field(default_factory=set)

    def task(self, task: Task) -> tuple[int, int]:
        """(down, up) bytes of delivering ``task`` (and, at first contact, of the join)."""
        down = up = 0
        if task.client not in self.joined:
            self.joined.add(task.client)
            join = pb.JoinRequest(name=task.client, protocol="fedkit.v1")
            welcome = pb.ServerMessage(welcome=pb.Welcome(
                session_id="0" * 32, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                max_payload_bytes=DEFAULT_MAX_MESSAGE_BYTES, chunk_bytes=self.chunk_bytes, heartbeat_s=10.0,
            ))
            md = [("fedkit-client", task.client)]
            md += [("authorization", "Bearer " + "t" * self.token_chars)] if self.token_chars else []
            up += join_up(md, join.ByteSize())
            down += join_down(welcome.ByteSize())
        header = task_to_proto(task, task.params.nbytes).ByteSize()
        sizes = chunk_messages(header, task.params.nbytes, self.chunk_bytes, wrapped=True)
        recv, send = receipt(sizes)
        return down + task_down(sizes) + send, up + recv

    def reply(self, task: Task, reply: Reply) -> tuple[int, int]:
        """(down, up) bytes of pushing ``reply`` and the server's answer."""
        size = reply.update.nbytes if reply.update is not None else 0
        header = reply_to_proto(reply, size, "0" * 32).ByteSize()
        sizes = chunk_messages(header, size, self.chunk_bytes, wrapped=False)
        recv, send = receipt(sizes)
        up = push_start(None) + task_down(sizes) + PUSH_END + send
        down = reply_ok(pb.Ack(task_id=reply.task_id).ByteSize()) + recv
        if task.client not in self.pushed:
            self.pushed.add(task.client)
            up, down = up + FIRST_PUSH_UP, down + FIRST_PUSH_DOWN
        return down, up
