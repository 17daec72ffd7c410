"""The Split stream over loopback gRPC: frames round-trip exactly, batches chunk, every refusal
has its status and ends only its own stream, and the endpoint always hears that a stream ended."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedkit import compression
from fedkit.compression.frame import pack_arrays
from fedkit.rng import rng
from fedkit.split.wire import SplitFrame, SplitRefused
from fedkit.transport import ClientTls, ServerTls, SplitDialer, TokenAuth, make_certs, overhead
from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport.security import client_metadata
from fedkit.transport.serde import split_messages
from fedkit.types import Encoded, Reply, Task

from .conftest import RawClient, enc

ROOT = Path(__file__).resolve().parents[2]


class EchoEndpoint:
    """A fake split server: the reply is a gradients frame with the very payload bytes received
    (exactness both ways), it refuses NaN activations, and it records every call."""

    def __init__(self, cap: int = 64 << 20, reply: bool = True) -> None:
        self.cap, self.reply = cap, reply
        self.lock = threading.Lock()
        self.allowed: dict[str, str] = {}  # task id -> client: the split tasks it serves
        self.opened: list[tuple[str, str]] = []
        self.frames: list[tuple[str, str, SplitFrame]] = []
        self.closed: dict[tuple[str, str], list[str]] = {}
        self._heard: dict[tuple[str, str], threading.Event] = {}

    def allow(self, task: Task) -> Task:
        self.allowed[task.task_id] = task.client
        return task

    def open(self, client: str, task_id: str) -> None:
        if self.allowed.get(task_id) != client:
            raise SplitRefused(f"task {task_id!r} is not a split task of {client!r}", "failed_precondition")
        with self.lock:
            self.opened.append((client, task_id))

    def exchange(self, client: str, task_id: str, frame: SplitFrame) -> SplitFrame | None:
        if frame.payload.codec not in ("identity", "quant(bits=8)"):
            raise SplitRefused(f"unknown codec {frame.payload.codec!r}")  # unclipped on purpose
        (a,) = compression.decode(frame.payload)
        if not np.isfinite(a).all():
            raise SplitRefused(f"step {frame.step}: activations contain NaN or Inf", "invalid_argument")
        with self.lock:
            self.frames.append((client, task_id, frame))
        if not self.reply:
            return None
        return SplitFrame(frame.step, "gradients", frame.payload, metrics={"loss": 0.25 * frame.step})

    def close(self, client: str, task_id: str, reason: str = "") -> None:
        with self.lock:
            self.closed.setdefault((client, task_id), []).append(reason)
            self._event(client, task_id).set()

    def max_frame_bytes(self) -> int:
        return self.cap

    def _event(self, client: str, task_id: str) -> threading.Event:
        return self._heard.setdefault((client, task_id), threading.Event())

    def wait_closed(self, client: str, task_id: str) -> list[str]:
        with self.lock:
            ev = self._event(client, task_id)
        assert ev.wait(10), f"endpoint never heard that the stream of {task_id} ended"
        return self.closed[(client, task_id)]


def acts(step: int, shape: tuple[int, ...] = (32, 256), value: float | None = None) -> np.ndarray:
    a = rng(0, "acts", step).standard_normal(shape).astype(np.float32)
    return a if value is None else np.full(shape, value, np.float32)


def frame(step: int, codec: str = "identity", labels: bool = True, **kw: Any) -> SplitFrame:
    x = [acts(step, **kw)]
    c = compression.make(codec)
    payload = c.encode(c.init(x), x, rng(0, "codec", step))[1]
    y = enc([np.arange(32, dtype=np.int64) % 10]) if labels else None
    return SplitFrame(step, "activations", payload, y)


def split_task(srv: Any, ep: EchoEndpoint, raw: RawClient, tid: str, rnd: int = 0) -> Task:
    """Open a split task for ``raw`` on the server and the endpoint; returns it as received."""
    srv.link.send([ep.allow(Task(round=rnd, client=raw.name, kind="split", params=enc([]), task_id=tid))])
    got = raw.next_task()
    assert got.task_id == tid
    return got


def dialer(raw: RawClient, **kw: Any) -> SplitDialer:
    d = SplitDialer()
    d.bind(raw.stub, raw.md, raw.session_id, **kw)
    return d


@pytest.fixture
def split_server(servers):
    def make(**kw: Any) -> tuple[Any, EchoEndpoint]:
        ep = kw.pop("endpoint", None) or EchoEndpoint()
        return servers(split=ep, **kw), ep

    return make


class Requests:
    """A hand-fed request stream for raw Split calls: the test decides when each message goes."""

    def __init__(self, *first: pb.SplitMessage) -> None:
        self.q: queue.SimpleQueue[pb.SplitMessage | None] = queue.SimpleQueue()
        for m in first:
            self.q.put(m)

    def __iter__(self) -> Iterator[pb.SplitMessage]:
        while (m := self.q.get()) is not None:
            yield m

    def end(self) -> None:
        self.q.put(None)


def opening(raw: RawClient, task: Task) -> pb.SplitMessage:
    return pb.SplitMessage(open=pb.SplitOpen(session_id=raw.session_id, task_id=task.task_id, round=task.round))


def raw_status(raw: RawClient, msgs: list[pb.SplitMessage], md: Any = None) -> grpc.RpcError:
    call = raw.stub.Split(iter(msgs), metadata=raw.md if md is None else md, timeout=10)
    with pytest.raises(grpc.RpcError) as ei:
        list(call)
    return ei.value


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["identity", "quant(bits=8)"])
def test_frames_round_trip_exactly_and_every_message_is_counted(split_server, raw, codec) -> None:
    srv, ep = split_server()
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    sent0, recv0 = srv.wire.totals()
    frames = [frame(s, codec) for s in range(3)]
    with dialer(c)(task) as stream:
        replies = [stream.send(f) for f in frames]
    assert ep.wait_closed("c0", "t0") == [""]  # a clean end: the endpoint hears no reason
    got = [f for _, _, f in ep.frames]
    assert [g.step for g in got] == [0, 1, 2]
    for f, g, r in zip(frames, got, replies, strict=True):
        assert (g.payload, g.labels, g.kind) == (f.payload, f.labels, "activations")  # bytes exact
        assert r is not None and (r.step, r.kind, r.payload) == (f.step, "gradients", f.payload)
        assert r.labels is None and dict(r.metrics) == {"loss": 0.25 * f.step}
    up = [opening(c, task), *(m for f in frames for m in split_messages(f)),
          pb.SplitMessage(close=pb.SplitClose())]
    down = [m for r in replies for m in split_messages(r)]
    sent1, recv1 = srv.wire.totals()  # every message, with gRPC's framing (fedkit/transport/overhead.py)
    assert recv1 - recv0 == sum(overhead.message(m.ByteSize()) for m in up)
    assert sent1 - sent0 == sum(overhead.message(m.ByteSize()) for m in down)


def test_a_batch_larger_than_a_message_is_chunked_both_ways(split_server, raw) -> None:
    srv, ep = split_server(chunk_bytes=100_000, max_message_bytes=1 << 20)
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    big = SplitFrame(0, "activations", enc([acts(0, (1000, 1000))]), enc([np.arange(50_000)]))  # 4.4 MB
    assert len(list(split_messages(big, 100_000))) > 40
    with dialer(c, chunk_bytes=99_999)(task) as stream:  # chunk borders fall inside the labels too
        reply = stream.send(big)
    ((_, _, got),) = ep.frames
    assert (got.payload, got.labels) == (big.payload, big.labels)
    assert reply is not None and reply.payload == big.payload
    sent, received = srv.wire.totals()
    assert sent > 4_000_000 and received > 4_400_000


def test_frames_sent_without_waiting_and_a_late_refusal_surfaces_at_close(split_server, raw) -> None:
    srv, ep = split_server(endpoint=EchoEndpoint(reply=False))  # local loss: nothing comes down
    c = raw(srv.port, "c0")
    ok, bad = split_task(srv, ep, c, "ok"), split_task(srv, ep, c, "bad")
    with dialer(c)(ok) as stream:
        assert [stream.send(frame(s), expect_reply=False) for s in range(4)] == [None] * 4
    assert [f.step for _, t, f in ep.frames if t == "ok"] == [0, 1, 2, 3]
    stream = dialer(c)(bad)
    stream.send(frame(0), expect_reply=False)
    stream.send(frame(1, value=float("nan")), expect_reply=False)
    with pytest.raises(SplitRefused, match="NaN") as ei:
        stream.close()
    assert ei.value.code == "invalid_argument"
    assert ep.wait_closed("c0", "bad")[0].startswith("INVALID_ARGUMENT")


def test_ushape_sends_two_up_frames_per_step(split_server, raw) -> None:
    srv, ep = split_server()
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    with dialer(c)(task) as stream:
        for s in range(2):
            head = stream.send(frame(s, labels=False))
            grad = SplitFrame(s, "gradients", enc([acts(s)]))
            assert head is not None and stream.send(grad) is not None
    assert [(f.step, f.kind) for _, _, f in ep.frames] == [
        (0, "activations"), (0, "gradients"), (1, "activations"), (1, "gradients")
    ]


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["step-skipped", "step-repeated", "nan", "long-codec", "not-a-frame", "labels-first"]
)
def test_a_bad_frame_is_invalid_argument_and_other_streams_go_on(split_server, raw, case) -> None:
    srv, ep = split_server()
    a, b = raw(srv.port, "a"), raw(srv.port, "b")
    ta, tb = split_task(srv, ep, a, "ta"), split_task(srv, ep, b, "tb")
    other = dialer(b)(tb)
    assert other.send(frame(0)) is not None  # b's stream is open while a misbehaves
    good = next(split_messages(frame(0)))
    sends: list[SplitFrame] = []
    if case == "step-skipped":
        sends, match = [frame(0), frame(2)], "step 2 activations is out of order: expected step 1"
    elif case == "step-repeated":
        sends, match = [frame(0), frame(0)], "out of order"
    elif case == "nan":
        sends, match = [frame(0, value=float("nan"))], "NaN or Inf"
    elif case == "long-codec":  # the endpoint quotes it; the status is clipped
        sends, match = [SplitFrame(0, "activations", Encoded("x" * 60_000, b""))], "unknown codec"
    elif case == "not-a-frame":
        good.activations.payload = b"garbage"
        good.activations.payload_bytes, good.activations.labels_bytes = 7, 0
        good.activations.labels = b""
        match = "malformed payload"
    else:
        good.activations.labels, good.activations.payload = good.activations.payload, good.activations.labels
        match = "labels bytes before the payload"
    if sends:
        stream = dialer(a)(ta)
        with pytest.raises(SplitRefused, match=match) as ei:
            for f in sends:
                stream.send(f)
        code, message = ei.value.code, str(ei.value)
        stream.close()
    else:
        e = raw_status(a, [opening(a, ta), good])
        code, message = e.code().name.lower(), e.details()
        assert match in message
    assert code == "invalid_argument"
    assert len(message) < 1200  # clipped, however long what the client sent
    assert ep.wait_closed("a", "ta")[0].startswith("INVALID_ARGUMENT")
    assert other.send(frame(1)) is not None
    other.close()
    assert ep.wait_closed("b", "tb") == [""]


@pytest.mark.parametrize("case", ["unknown", "other-client", "wrong-round", "stale-session", "not-split", "closed"])
def test_a_stream_for_a_task_not_open_for_us_is_failed_precondition(split_server, raw, case) -> None:
    srv, ep = split_server()
    a, b = raw(srv.port, "a"), raw(srv.port, "b")
    task = split_task(srv, ep, a, "ta")
    opener, session = a, a.session_id
    if case == "unknown":
        task = Task(round=0, client="a", kind="split", params=enc([]), task_id="no-such-task")
    elif case == "other-client":
        opener, session = b, b.session_id
    elif case == "wrong-round":
        task = Task(round=7, client="a", kind="split", params=enc([]), task_id="ta")
    elif case == "stale-session":
        session = "0" * 32
    elif case == "not-split":  # open on the server, but the endpoint serves no split task for it
        srv.link.send([Task(round=0, client="a", kind="train", params=enc([]), task_id="fl")])
        task = a.next_task()
    else:
        srv.link.cancel(["ta"])
    d = SplitDialer()
    d.bind(opener.stub, opener.md, session)
    stream = d(task)
    with pytest.raises(SplitRefused) as ei:
        stream.send(frame(0))
    assert ei.value.code == "failed_precondition", ei.value
    print(case, ei.value)
    stream.close()
    assert ep.opened == [] and ep.frames == [] and ep.closed == {}


def test_a_declared_size_over_the_cap_is_refused_before_buffering(split_server, raw) -> None:
    srv, ep = split_server(endpoint=EchoEndpoint(cap=100_000))
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    huge = pb.SplitMessage(activations=pb.SplitBatch(step=0, payload=b"FKE1", payload_bytes=10**12))
    req = Requests(opening(c, task), huge)  # the rest of the terabyte never comes
    call = c.stub.Split(iter(req), metadata=c.md, timeout=10)
    try:
        with pytest.raises(grpc.RpcError) as ei:
            next(call)
    finally:
        req.end()
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "declares 1000000000000 bytes, over the limit of 100000" in ei.value.details()
    assert ep.frames == [] and ep.wait_closed("c0", "t0")[0].startswith("RESOURCE_EXHAUSTED")
    # through the client end: a frame over the cap is refused with the same status
    t1 = split_task(srv, ep, c, "t1")
    with pytest.raises(SplitRefused, match="over the limit") as e2:
        dialer(c)(t1).send(frame(0, shape=(200, 200)))
    assert e2.value.code == "resource_exhausted"


def test_one_stream_per_task(split_server, raw) -> None:
    srv, ep = split_server()
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    first = dialer(c)(task)
    assert first.send(frame(0)) is not None
    with pytest.raises(SplitRefused, match="already has an open split stream") as ei:
        dialer(c)(task).send(frame(0))
    assert ei.value.code == "resource_exhausted"
    assert first.send(frame(1)) is not None
    first.close()
    assert ep.opened == [("c0", "t0")] and ep.wait_closed("c0", "t0") == [""]


def test_without_credentials_the_stream_is_unauthenticated(split_server, raw) -> None:
    srv, ep = split_server(auth=TokenAuth.from_tokens({"c0": "secret"}))
    c = raw(srv.port, "c0", token="secret")
    task = split_task(srv, ep, c, "t0")
    for md in [client_metadata("c0", None), client_metadata("c0", "wrong"), ()]:
        e = raw_status(c, [opening(c, task)], md=md)
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, md
    d = SplitDialer()
    d.bind(c.stub, client_metadata("c0", None), c.session_id)
    with pytest.raises(SplitRefused) as ei:
        d(task).send(frame(0))
    assert ei.value.code == "unauthenticated"
    assert ep.opened == []
    with dialer(c)(task) as stream:  # the right token still works
        assert stream.send(frame(0)) is not None


def test_malformed_streams_are_invalid_argument(split_server, raw) -> None:
    srv, ep = split_server()
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    batch = list(split_messages(frame(0)))
    close = pb.SplitMessage(close=pb.SplitClose())
    cases = {
        "no open first": [*batch, close],
        "second open": [opening(c, task), opening(c, task)],
        "close inside a batch": [opening(c, task), pb.SplitMessage(
            activations=pb.SplitBatch(step=0, payload=b"FKE1", payload_bytes=100)), close],
        "empty message": [opening(c, task), pb.SplitMessage()],
        "no close": [opening(c, task), *batch],  # the batch itself was fine
    }
    for what, msgs in cases.items():
        e = raw_status(c, msgs)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, e)
        assert len(ep.frames) == (what == "no close"), what
    assert "stream ended without SplitClose" in e.details()
    assert len(ep.closed[("c0", "t0")]) == 4  # every stream that opened was closed, with a reason
    assert all(ep.closed[("c0", "t0")])


def test_split_is_unimplemented_without_an_endpoint(servers, raw) -> None:
    srv = servers()
    c = raw(srv.port, "c0")
    assert raw_status(c, [pb.SplitMessage()]).code() == grpc.StatusCode.UNIMPLEMENTED


# ---- ends that the client did not say ------------------------------------------------------


def test_a_cancelled_task_ends_its_open_stream(split_server, raw) -> None:
    srv, ep = split_server()
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    stream = dialer(c)(task)
    assert stream.send(frame(0)) is not None  # bound and waiting for step 1
    srv.link.cancel(["t0"])  # the engine's deadline
    (reason,) = ep.wait_closed("c0", "t0")
    assert reason.startswith("FAILED_PRECONDITION") and "past its deadline" in reason
    with pytest.raises(SplitRefused, match="past its deadline") as ei:
        stream.send(frame(1))
    assert ei.value.code == "failed_precondition"
    stream.close()
    assert len(ep.frames) == 1


def test_a_client_killed_mid_stream_is_closed_with_a_reason(split_server, raw) -> None:
    srv, ep = split_server()
    child = textwrap.dedent(f"""
        import sys
        import grpc
        from fedkit.compression.frame import pack_arrays
        import numpy as np
        from fedkit.transport._proto import fedkit_pb2 as pb, fedkit_pb2_grpc as pb_grpc
        from fedkit.types import Encoded
        ch = grpc.insecure_channel("127.0.0.1:{srv.port}")
        stub, md = pb_grpc.FedKitStub(ch), (("fedkit-client", "dies"),)
        join = iter(stub.Join(pb.JoinRequest(name="dies"), metadata=md))
        session = next(join).welcome.session_id
        print("joined", flush=True)
        while next(join).WhichOneof("body") != "task":
            pass
        data = Encoded("identity", pack_arrays([np.ones((4, 4), np.float32)])).to_bytes()
        msgs = [pb.SplitMessage(open=pb.SplitOpen(session_id=session, task_id="t0")),
                pb.SplitMessage(activations=pb.SplitBatch(payload=data, payload_bytes=len(data), last=True))]
        def requests():
            yield from msgs
            sys.stdin.read()  # hold the stream open until killed
        replies = iter(stub.Split(requests(), metadata=md))
        next(replies)
        print("mid-stream", flush=True)
        sys.stdin.read()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "joined"
        srv.link.send([ep.allow(Task(round=0, client="dies", kind="split", params=enc([]), task_id="t0"))])
        assert proc.stdout.readline().strip() == "mid-stream"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        (reason,) = ep.wait_closed("dies", "t0")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reason, "a stream that dies is closed with a reason"
    print(reason)
    assert [f.step for _, _, f in ep.frames] == [0]


def test_a_client_that_gives_up_tells_the_endpoint_why(split_server, raw) -> None:
    srv, ep = split_server()
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    with pytest.raises(RuntimeError, match="out of memory"), dialer(c)(task) as stream:
        stream.send(frame(0))
        raise RuntimeError("out of memory")
    assert ep.wait_closed("c0", "t0") == ["client gave up: 'RuntimeError: out of memory'"]


def test_stopping_the_server_closes_open_streams(servers, raw) -> None:
    ep = EchoEndpoint()
    srv = servers(split=ep)
    c = raw(srv.port, "c0")
    task = split_task(srv, ep, c, "t0")
    stream = dialer(c)(task)
    stream.send(frame(0))
    srv.stop(grace=0.2)
    assert ep.closed[("c0", "t0")][0]  # heard before stop returned
    with pytest.raises((ConnectionError, SplitRefused)):
        stream.send(frame(1))
    stream.close()


# ---- the deployed client: run_client, TLS ---------------------------------------------------


@pytest.mark.parametrize("mutual", [False, True])
def test_run_client_serves_split_tasks_over_tls(split_server, clients, tmp_path, mutual) -> None:
    certs = make_certs(tmp_path / "pki", clients=("client-0",))
    tls = ServerTls.from_files(certs["server_cert"], certs["server_key"], certs["ca_cert"] if mutual else None)
    srv, ep = split_server(tls=tls)
    ctls = ClientTls.from_files(
        certs["ca_cert"], *((certs["client-0_cert"], certs["client-0_key"]) if mutual else ())
    )
    connect = SplitDialer()

    def host(task: Task) -> Reply:  # what a split client host does with its connect
        with connect(task) as stream:
            grads = [stream.send(frame(s)) for s in range(3)]
        total = sum(float(compression.decode(g.payload)[0].sum()) for g in grads if g is not None)
        return Reply(task_id=task.task_id, client=task.client, round=task.round, num_examples=96,
                     update=Encoded("identity", pack_arrays([np.float64([total])])))

    clients.start(f"localhost:{srv.port}", host, "client-0", tls=ctls, split=connect)
    srv.wait_for_clients(1, timeout=10)
    task = ep.allow(Task(round=0, client="client-0", kind="split", params=enc([]), task_id="t0"))
    srv.link.send([task])
    (arrival,) = list(srv.link.arrivals(srv.link.now() + 30))
    assert arrival.reply is not None and arrival.reply.error is None, arrival.reason
    expected = sum(float(acts(s).sum()) for s in range(3))
    assert compression.decode(arrival.reply.update)[0][0] == pytest.approx(expected)
    assert ep.closed == {("client-0", "t0"): [""]}  # heard before the reply was pushed
    assert not clients.errors


def test_the_dialer_outside_a_session_says_so() -> None:
    with pytest.raises(ConnectionError, match="no session"):
        SplitDialer()(Task(round=0, client="c", kind="split", params=enc([]), task_id="t"))
