"""What a hostile reply stream may make the server buffer: a cap from the model, refused before
buffering; nothing more once its task closed; a few streams per session. And the reply's
meaning on the wire (update_kind), and replies authenticated by their session."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedkit.compression.limits import payload_bytes
from fedkit.deploy import ServerOptions, serve
from fedkit.scenario import validate
from fedkit.scenario.build import build_server
from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport.security import TokenAuth
from fedkit.transport.serde import reply_chunks
from fedkit.types import Reply, Task
from tests.conftest import tiny_raw
from tests.transport.conftest import enc

pytestmark = pytest.mark.timeout(60)


def _rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, **kw)
    return ei.value


def _task(client: str, rnd: int = 1) -> Task:
    return Task(round=rnd, client=client, kind="train", params=enc([np.zeros(4, np.float32)]),
                task_id=f"r{rnd}.{client}")


def _until(cond, timeout: float = 10.0) -> None:
    """Poll a condition the server reaches on its own (not a sleep that orders events)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def _held(chunks: list[pb.ReplyChunk], release: threading.Event) -> Iterator[pb.ReplyChunk]:
    """Yield ``chunks`` then hold the stream open (never half-close) until ``release``."""
    yield from chunks
    release.wait(20)


def test_deployed_server_caps_replies_by_the_model(tmp_path: Path, raw) -> None:
    s = validate(tiny_raw(rounds=1, clients={"count": 1, "per_round": {"fraction": 1.0}},
                          server={"deadline_s": 30}))
    plan, _ = build_server(s)
    cap = payload_bytes(plan.acceptance.layout)
    port_file = tmp_path / "port"
    done: dict = {}

    def server() -> None:
        opts = ServerOptions(insecure=True, port_file=str(port_file), wait_timeout_s=30)
        try:
            done["summary"] = serve(s, tmp_path / "run", opts)
        except Exception as e:  # noqa: BLE001  (the refused reply leaves the round without updates)
            done["error"] = e

    t = threading.Thread(target=server, daemon=True)
    t.start()
    _until(port_file.exists)
    rc = raw(int(port_file.read_text()), "client-0")
    assert rc.welcome.max_payload_bytes == cap < 64 << 10  # not 4 GiB for a 10 KB model
    assert rc.welcome.max_message_bytes <= cap + (128 << 10)
    task = rc.next_task()
    h = rc.header(task.task_id, task.round, has_update=True, payload_bytes=1 << 30,
                  update_kind=pb.UPDATE_KIND_DELTA)
    h.last, h.data = False, b"FKE1"
    start = time.monotonic()
    e = _rpc_error(rc.stub.PushReply, iter([h]), timeout=20)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"declared size {1 << 30} bytes exceeds the limit of {cap}" in e.details()
    assert time.monotonic() - start < 5  # refused at the first chunk, not after a flood
    t.join(30)
    assert "error" in done and "no round" in str(done["error"])  # the refusal used up the task


def test_a_stream_is_refused_at_the_next_chunk_once_its_task_closed(servers, raw) -> None:
    srv = servers()
    rc = raw(srv.port, "a")
    srv.wait_for_clients(1, timeout=10)
    task = _task("a")
    srv.link.send([task])
    got = rc.next_task()
    first = rc.header(got.task_id, 1, has_update=True, payload_bytes=1000, update_kind=pb.UPDATE_KIND_DELTA)
    first.last, first.data = False, b"FKE1" + bytes(96)
    more, release = threading.Event(), threading.Event()

    def chunks() -> Iterator[pb.ReplyChunk]:
        yield first
        more.wait(20)
        yield pb.ReplyChunk(offset=100, data=bytes(100))
        release.wait(20)  # a flood would go on; the server must not wait for it

    box: dict = {}
    th = threading.Thread(target=lambda: box.setdefault("e", _rpc_error(rc.stub.PushReply, chunks(), timeout=15)))
    th.start()
    _until(lambda: srv._call(lambda hub: hub.sessions["a"].streams) == 1)
    srv.link.cancel([task.task_id])  # the engine's deadline passed
    more.set()
    th.join(20)
    release.set()
    e = box["e"]
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    assert "closed while its reply was streaming" in e.details()


def test_reply_streams_per_session_are_capped(servers, raw) -> None:
    srv = servers(max_reply_streams=2)
    rc = raw(srv.port, "a")
    srv.wait_for_clients(1, timeout=10)
    srv.link.send([_task("a")])
    got = rc.next_task()
    release = threading.Event()
    h = rc.header(got.task_id, 1, has_update=True, payload_bytes=100, update_kind=pb.UPDATE_KIND_DELTA)
    h.last, h.data = False, b"FKE1"
    futures = [rc.stub.PushReply.future(_held([h], release), timeout=15) for _ in range(2)]
    try:
        _until(lambda: srv._call(lambda hub: hub.sessions["a"].streams) == 2)
        e = _rpc_error(rc.stub.PushReply, iter([h]), timeout=10)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 reply streams open" in e.details()
    finally:
        release.set()
        for f in futures:
            f.cancel()
    _until(lambda: srv._call(lambda hub: hub.sessions["a"].streams) == 0)  # budget handed back


@pytest.mark.parametrize("kind", [pb.UPDATE_KIND_UNSPECIFIED, pb.UPDATE_KIND_WEIGHTS])
def test_an_update_must_say_it_is_a_delta(servers, raw, kind: int) -> None:
    srv = servers()
    rc = raw(srv.port, "a")
    srv.wait_for_clients(1, timeout=10)
    srv.link.send([_task("a")])
    got = rc.next_task()
    chunks = list(reply_chunks(Reply(got.task_id, "a", 1, 5, update=enc([np.zeros(4, np.float32)])),
                               session_id=rc.session_id))
    chunks[0].header.update_kind = kind
    e = _rpc_error(rc.push, *chunks)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UPDATE_KIND_DELTA" in e.details() and pb.UpdateKind.Name(kind) in e.details()
    arrival = next(srv.link.arrivals(srv.link.now() + 10))
    assert arrival.reply is None and "refused" in arrival.reason  # the task is used up


def test_replies_are_authenticated_by_their_session(servers, raw) -> None:
    srv = servers(auth=TokenAuth.from_tokens({"a": "secret-a"}))
    rc = raw(srv.port, "a", token="secret-a")
    srv.wait_for_clients(1, timeout=10)
    srv.link.send([_task("a")])
    got = rc.next_task()
    reply = Reply(got.task_id, "a", 1, 5, update=enc([np.zeros(4, np.float32)]))
    wrong = list(reply_chunks(reply, session_id="f" * 32))
    e = _rpc_error(rc.stub.PushReply, iter(wrong), timeout=10)  # no token, unknown session
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "rejoin" in e.details()  # not fatal
    bad_token = (("fedkit-client", "a"), ("authorization", "Bearer nope"))
    e = _rpc_error(rc.stub.PushReply, reply_chunks(reply, session_id=rc.session_id), metadata=bad_token, timeout=10)
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    ack = rc.stub.PushReply(reply_chunks(reply, session_id=rc.session_id), timeout=10)  # no metadata
    assert ack.task_id == got.task_id
    assert next(srv.link.arrivals(srv.link.now() + 10)).reply == reply
