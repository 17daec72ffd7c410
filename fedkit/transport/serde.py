"""Task/Reply <-> protobuf, and the chunking that lets payloads exceed any message limit.

Tensors never become protobuf fields: a payload is the ``Encoded.to_bytes()`` frame, cut into
chunks of ``chunk_bytes`` straight from ``Encoded.data`` (one copy per chunk, no whole-frame
copy) and reassembled with one ``b"".join`` into the decoded ``Encoded.data``. The
:class:`Reassembler` enforces a hard size cap *before* buffering, because a receiver that trusts
a declared size can be made to allocate anything. Split-learning batches (:class:`SplitFrame`
of fedkit/split/wire.py) travel as :func:`split_messages` and come back through a
:class:`SplitAssembler`, under the same rules.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.types import DecodeError, Encoded, Reply, Task
from fedkit.untrusted import check_metrics, shorten

if TYPE_CHECKING:  # at run time imported where used: fedkit.split's package imports torch
    from fedkit.split.wire import SplitFrame

MiB = 1 << 20
DEFAULT_CHUNK_BYTES = 2 * MiB
DEFAULT_MAX_MESSAGE_BYTES = 16 * MiB
DEFAULT_MAX_PAYLOAD_BYTES = 4 << 30
WINDOW_BYTES = 8 * MiB
"""HTTP/2 flow-control window per stream (gRPC's lookahead): four default chunks in flight."""
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}\Z")  # kinds are extensible; their meaning is the runtime's


class TransportError(Exception):
    """A protocol violation, carrying the gRPC status the peer should see."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(msg: str) -> TransportError:
    return TransportError(grpc.StatusCode.INVALID_ARGUMENT, msg)


# ---- headers -----------------------------------------------------------------------------


def task_to_proto(task: Task, payload_bytes: int) -> pb.TaskHeader:
    """Header of a task whose params frame has ``payload_bytes`` bytes. Config must be JSON:
    a typed config (anything with pydantic's ``model_dump``) or a mapping."""
    try:
        raw = task.config.model_dump(mode="json") if hasattr(task.config, "model_dump") else task.config
        config = json.dumps(dict(raw), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"task {task.task_id!r}: config is not JSON-serialisable: {e}") from None
    return pb.TaskHeader(
        task_id=task.task_id,
        round=task.round,
        client=task.client,
        kind=task.kind,
        config_json=config,
        payload_bytes=payload_bytes,
        version=task.version,
    )


def _as_encoded(payload: bytes | memoryview | Encoded, what: str) -> Encoded:
    if isinstance(payload, Encoded):
        return payload
    try:
        return Encoded.from_bytes(payload)
    except DecodeError as e:
        raise _invalid(f"{what}: malformed payload: {e}") from None


def task_from_proto(header: pb.TaskHeader, payload: bytes | memoryview | Encoded) -> Task:
    """Inverse of :func:`task_to_proto`; raises :class:`TransportError` naming the problem.

    ``payload`` is the params frame, or the :class:`Encoded` a :class:`Reassembler` decoded.
    """
    if not _KIND.match(header.kind):
        raise _invalid(f"task {shorten(header.task_id)}: malformed kind {shorten(header.kind)}")
    try:
        config = json.loads(header.config_json) if header.config_json else {}
    except json.JSONDecodeError as e:
        raise _invalid(f"task {header.task_id!r}: config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise _invalid(f"task {header.task_id!r}: config must be a JSON object")
    return Task(
        round=header.round,
        client=header.client,
        kind=header.kind,  # type: ignore[arg-type]
        params=_as_encoded(payload, f"task {header.task_id!r}: params"),
        config=config,
        task_id=header.task_id,
        version=header.version,
    )


def reply_to_proto(reply: Reply, payload_bytes: int, session_id: str = "") -> pb.ReplyHeader:
    """Header of a reply whose update frame has ``payload_bytes`` bytes."""
    h = pb.ReplyHeader(
        session_id=session_id,
        task_id=reply.task_id,
        round=reply.round,
        client=reply.client,
        num_examples=reply.num_examples,
        metrics={k: float(v) for k, v in reply.metrics.items()},
        has_update=reply.update is not None,
        payload_bytes=payload_bytes,
        version=reply.version,
        update_kind=pb.UPDATE_KIND_DELTA if reply.update is not None else pb.UPDATE_KIND_UNSPECIFIED,
    )
    if reply.error is not None:
        h.error = reply.error
    return h


def _metrics(metrics: Any, what: str) -> dict[str, float]:
    try:
        return check_metrics(dict(metrics))
    except ValueError as e:
        raise _invalid(f"{what}: {e}") from None


def reply_from_proto(
    header: pb.ReplyHeader, payload: bytes | memoryview | Encoded | None
) -> Reply:
    """Inverse of :func:`reply_to_proto`; a malformed frame is INVALID_ARGUMENT."""
    update = None
    what = f"reply to task {shorten(header.task_id)}"
    if header.has_update:
        if header.update_kind != pb.UPDATE_KIND_DELTA:
            kind = pb.UpdateKind.Name(header.update_kind) if header.update_kind in pb.UpdateKind.values() else header.update_kind
            raise _invalid(
                f"{what}: update_kind is {kind}; a fedkit v1 update is UPDATE_KIND_DELTA "
                "(local parameters minus the global parameters the task sent)"
            )
        update = _as_encoded(payload if payload is not None else b"", what)
    elif payload is not None and (isinstance(payload, Encoded) or len(payload)):
        raise _invalid(f"{what}: payload sent but has_update is false")
    return Reply(
        task_id=header.task_id,
        client=header.client,
        round=header.round,
        num_examples=header.num_examples,
        update=update,
        metrics=_metrics(header.metrics, what),
        error=header.error if header.HasField("error") else None,
        version=header.version,
    )


# ---- chunking ----------------------------------------------------------------------------


def frame_head(enc: Encoded) -> bytes:
    """The frame bytes before ``enc.data``: ``to_bytes() == frame_head(enc) + enc.data``."""
    return Encoded(enc.codec, b"").to_bytes()


def _slices(
    enc: Encoded | None, chunk_bytes: int
) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, bytes, last) of the frame of ``enc``, cut without building the whole frame.

    Slicing the head and a memoryview of ``enc.data`` costs one copy per chunk instead of a
    full-frame ``to_bytes()`` copy first (which matters at hundreds of MB).
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    head = frame_head(enc) if enc is not None else b""
    body = memoryview(enc.data if enc is not None else b"")
    h, total = len(head), len(head) + len(body)
    count = max(1, math.ceil(total / chunk_bytes))
    for i in range(count):
        lo = i * chunk_bytes
        hi = min(lo + chunk_bytes, total)
        part = body[max(lo - h, 0) : max(hi - h, 0)]
        piece = b"".join((head[lo:hi], part)) if lo < h else bytes(part)
        yield lo, piece, i == count - 1


def task_chunks(task: Task, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pb.TaskChunk]:
    """Stream a task: the header rides on the first chunk."""
    header = task_to_proto(task, task.params.nbytes)
    for off, data, last in _slices(task.params, chunk_bytes):
        c = pb.TaskChunk(offset=off, data=data, last=last)
        if off == 0:
            c.header.CopyFrom(header)
        yield c


def reply_chunks(
    reply: Reply, chunk_bytes: int = DEFAULT_CHUNK_BYTES, session_id: str = ""
) -> Iterator[pb.ReplyChunk]:
    """Stream a reply (header first, then the update frame in chunks)."""
    size = reply.update.nbytes if reply.update is not None else 0
    header = reply_to_proto(reply, size, session_id)
    for off, data, last in _slices(reply.update, chunk_bytes):
        c = pb.ReplyChunk(offset=off, data=data, last=last)
        if off == 0:
            c.header.CopyFrom(header)
        yield c


class Reassembler:
    """Collects one chunk sequence (TaskChunk or ReplyChunk) and checks it is consistent.

    ``feed`` returns True when the last chunk arrived. Sizes above ``max_payload_bytes`` are
    RESOURCE_EXHAUSTED (checked on the declared size, before any data is buffered, and on the
    accumulated size); gaps, overlaps, a missing or repeated header, data beyond the declared
    size or after ``last`` are INVALID_ARGUMENT.
    """

    def __init__(self, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, what: str = "payload"):
        self.max_payload_bytes = max_payload_bytes
        self.what = what
        self.header: Any = None
        self._parts: list[bytes] = []
        self._received = 0
        self.done = False

    def feed(self, chunk: pb.TaskChunk | pb.ReplyChunk) -> bool:
        if self.done:
            raise _invalid(f"{self.what}: chunk after the last one")
        has_header = chunk.HasField("header")
        if self.header is None:
            if not has_header:
                raise _invalid(f"{self.what}: first chunk has no header")
            self.header = chunk.header
            declared = self.header.payload_bytes
            if declared > self.max_payload_bytes:
                raise TransportError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.what}: declared size {declared} bytes exceeds the limit of "
                    f"{self.max_payload_bytes} bytes",
                )
        elif has_header:
            raise _invalid(f"{self.what}: header repeated at offset {chunk.offset}")
        if chunk.offset != self._received:
            raise _invalid(
                f"{self.what}: chunk at offset {chunk.offset}, expected {self._received}"
            )
        n = len(chunk.data)
        if self._received + n > self.max_payload_bytes:
            raise TransportError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.what}: more than {self.max_payload_bytes} bytes received",
            )
        if self._received + n > self.header.payload_bytes:
            raise _invalid(
                f"{self.what}: {self._received + n} bytes received, "
                f"header declared {self.header.payload_bytes}"
            )
        if n:
            self._parts.append(chunk.data)
        self._received += n
        if chunk.last:
            if self._received != self.header.payload_bytes:
                raise _invalid(
                    f"{self.what}: truncated: {self._received} of "
                    f"{self.header.payload_bytes} bytes"
                )
            self.done = True
        return self.done

    def _take(self) -> list[bytes]:
        if not self.done:
            raise _invalid(
                f"{self.what}: stream ended after {self._received} bytes without a last chunk"
            )
        parts, self._parts = self._parts, []
        return parts

    def payload(self) -> bytes:
        """The reassembled bytes (one join); only valid once ``feed`` returned True."""
        parts = self._take()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def encoded(self) -> Encoded | None:
        """The payload decoded as an :class:`Encoded` frame (None when it is empty).

        Parses the frame head from the first chunk and joins the rest straight into
        ``Encoded.data``: one copy of the payload instead of a join plus ``from_bytes``.
        """
        parts = self._take()
        return _join_encoded(parts, f"{self.what}: malformed payload") if parts else None


def _join_encoded(parts: list[bytes], what: str) -> Encoded:
    """Parse the frame head from the first part and join the rest straight into ``data``."""
    first = parts[0]
    try:
        if len(first) >= 6:
            (n,) = struct.unpack_from("<H", first, 4)
            if len(first) >= 6 + n:
                head = Encoded.from_bytes(first[: 6 + n])  # checks magic and codec name
                body: list[bytes | memoryview] = [memoryview(first)[6 + n :], *parts[1:]]
                return Encoded(head.codec, b"".join(body))
        return Encoded.from_bytes(b"".join(parts))
    except DecodeError as e:
        raise _invalid(f"{what}: {e}") from None


def encode_task(task: Task, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[pb.TaskChunk]:
    """All chunks of a task (for tests and tools; the server streams lazily)."""
    return list(task_chunks(task, chunk_bytes))


def decode_task(
    chunks: Iterable[pb.TaskChunk], max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Task:
    """Reassemble and decode a complete task chunk sequence."""
    r = Reassembler(max_payload_bytes, "task")
    for c in chunks:
        r.feed(c)
    params = r.encoded()
    if params is None:
        raise _invalid("task: empty params payload")
    return task_from_proto(r.header, params)


def decode_reply(
    chunks: Iterable[pb.ReplyChunk], max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> Reply:
    """Reassemble and decode a complete reply chunk sequence."""
    r = Reassembler(max_payload_bytes, "reply")
    for c in chunks:
        r.feed(c)
    header = r.header
    return reply_from_proto(header, r.encoded() if header.has_update else r.payload())


# ---- split-learning batches (the Split stream; contract in protos/fedkit/v1/fedkit.proto) ---


def _frame_piece(enc: Encoded, head: bytes, lo: int, hi: int) -> bytes:
    """Bytes ``[lo, hi)`` of ``enc.to_bytes()`` (``head = frame_head(enc)``), one copy."""
    h = len(head)
    if hi <= h:
        return head[lo:hi]
    part = memoryview(enc.data)[max(lo - h, 0) : hi - h]
    return b"".join((head[lo:], part)) if lo < h else bytes(part)


def split_messages(frame: SplitFrame, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pb.SplitMessage]:
    """The SplitMessages of one batch: payload frame then labels frame, cut at ``chunk_bytes``;
    the first chunk declares both sizes and carries the metrics."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    p_head, n_pay = frame_head(frame.payload), frame.payload.nbytes
    labels = frame.labels
    l_head, n_lab = (frame_head(labels), labels.nbytes) if labels is not None else (b"", 0)
    total = n_pay + n_lab
    count = max(1, math.ceil(total / chunk_bytes))
    for i in range(count):
        lo, hi = i * chunk_bytes, min((i + 1) * chunk_bytes, total)
        msg = pb.SplitMessage()
        b = msg.activations if frame.kind == "activations" else msg.gradients
        b.SetInParent()
        b.step = frame.step
        b.offset = lo
        b.last = i == count - 1
        if lo == 0:
            b.payload_bytes = n_pay
            b.labels_bytes = n_lab
            b.metrics.update({k: float(v) for k, v in frame.metrics.items()})
        if lo < n_pay:
            b.payload = _frame_piece(frame.payload, p_head, lo, min(hi, n_pay))
        if hi > n_pay and labels is not None:
            b.labels = _frame_piece(labels, l_head, max(lo - n_pay, 0), hi - n_pay)
        yield msg


class SplitAssembler:
    """Reassembles the batches of one direction of a Split stream and checks the contract.

    ``feed(kind, batch)`` returns the :class:`SplitFrame` when a batch's last chunk arrived,
    else None. A declared size above ``max_frame_bytes`` is RESOURCE_EXHAUSTED on the first
    chunk, before anything is buffered; inconsistent chunks, malformed frames or metrics, and
    (with ``ordered``: the client -> server direction) steps out of order are INVALID_ARGUMENT.
    """

    def __init__(self, max_frame_bytes: int, what: str = "split batch", ordered: bool = False):
        self.max_frame_bytes = max_frame_bytes
        self.what = what
        self.ordered = ordered
        self._last: tuple[int, str] | None = None  # (step, kind) of the last batch begun
        self._kind: str | None = None  # the batch being received, if any
        self._reset()

    def _reset(self) -> None:
        self._kind = None
        self._step = 0
        self._sizes = (0, 0)
        self._metrics: dict[str, float] = {}
        self._payload: list[bytes] = []
        self._labels: list[bytes] = []
        self._received = 0

    @property
    def busy(self) -> bool:
        """A batch has begun and its last chunk has not arrived."""
        return self._kind is not None

    def _check_order(self, step: int, kind: str) -> None:
        last = self._last
        if last is None:
            ok, want = (step, kind) == (0, "activations"), "step 0 activations"
        elif last[1] == "activations":
            ok = (step, kind) in ((last[0], "gradients"), (last[0] + 1, "activations"))
            want = f"step {last[0] + 1} activations or step {last[0]} gradients"
        else:
            ok, want = (step, kind) == (last[0] + 1, "activations"), f"step {last[0] + 1} activations"
        if not ok:
            raise _invalid(f"{self.what}: step {step} {kind} is out of order: expected {want}")
        self._last = (step, kind)

    def _begin(self, kind: str, b: pb.SplitBatch) -> None:
        if b.offset != 0:
            raise _invalid(f"{self.what}: batch of step {b.step} starts at offset {b.offset}, not 0")
        if self.ordered:
            self._check_order(b.step, kind)
        declared = b.payload_bytes + b.labels_bytes
        if declared > self.max_frame_bytes:
            raise TransportError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.what}: step {b.step} {kind} declares {declared} bytes, over the limit "
                f"of {self.max_frame_bytes} bytes",
            )
        if b.payload_bytes == 0:
            raise _invalid(f"{self.what}: step {b.step} {kind} declares no payload")
        self._metrics = _metrics(b.metrics, f"{self.what}: step {b.step}")
        self._kind, self._step, self._sizes = kind, b.step, (b.payload_bytes, b.labels_bytes)

    def feed(self, kind: str, b: pb.SplitBatch) -> SplitFrame | None:
        if self._kind is None:
            self._begin(kind, b)
        elif kind != self._kind or b.step != self._step:
            raise _invalid(
                f"{self.what}: a chunk of step {b.step} {kind} inside the batch of step "
                f"{self._step} {self._kind} (batches never interleave)"
            )
        elif b.payload_bytes or b.labels_bytes or b.metrics:
            raise _invalid(f"{self.what}: sizes or metrics on a chunk after the first")
        elif b.offset != self._received:
            raise _invalid(f"{self.what}: chunk at offset {b.offset}, expected {self._received}")
        n_pay, n_lab = self._sizes
        p, q = len(b.payload), len(b.labels)
        got = self._received + p + q
        if (p and self._received + p > n_pay) or got > n_pay + n_lab:
            raise _invalid(
                f"{self.what}: step {self._step}: {got} bytes received, declared "
                f"{n_pay} payload + {n_lab} labels"
            )
        if q and self._received + p < n_pay:
            raise _invalid(f"{self.what}: step {self._step}: labels bytes before the payload ended")
        if p:
            self._payload.append(b.payload)
        if q:
            self._labels.append(b.labels)
        self._received = got
        if not b.last:
            return None
        if got != n_pay + n_lab:
            raise _invalid(f"{self.what}: step {self._step}: truncated: {got} of {n_pay + n_lab} bytes")
        from fedkit.split.wire import SplitFrame

        what = f"{self.what}: step {self._step}"
        frame = SplitFrame(
            step=self._step,
            kind=self._kind,  # type: ignore[arg-type]
            payload=_join_encoded(self._payload, f"{what}: malformed payload"),
            labels=_join_encoded(self._labels, f"{what}: malformed labels") if n_lab else None,
            metrics=self._metrics,
        )
        self._reset()
        return frame
