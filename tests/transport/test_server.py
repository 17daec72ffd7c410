"""End to end over loopback: exchange, chunking, failures, stale and bad replies, reconnects."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import numpy as np
import pytest

from fedkit.compression.frame import unpack_arrays
from fedkit.transport import GrpcServer
from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport.serde import reply_chunks
from fedkit.types import Encoded, Reply, Task

from .conftest import enc, exchange, plus_one, tasks_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rpc_error(fn, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args)
    return ei.value


def test_exchange_with_three_clients_then_shutdown(servers, clients) -> None:
    srv = servers()
    addr = f"127.0.0.1:{srv.port}"
    for name in ("c2", "c0", "c1"):
        clients.start(addr, plus_one, name)
    assert srv.wait_for_clients(3, timeout=10) == ["c0", "c1", "c2"]
    assert srv.link.clients() == ["c0", "c1", "c2"]
    params = enc([np.zeros((3, 4), np.float32), np.arange(5, dtype=np.int32)])
    for rnd in range(3):
        tasks = tasks_for(["c2", "c0", "c1"], rnd, params, config={"lr": 0.1})
        replies = exchange(srv.link, tasks, deadline_s=10)
        assert [r.client for r in replies] == ["c2", "c0", "c1"]  # the order of the tasks
        for r in replies:
            assert r.ok and r.round == rnd and r.num_examples == 10 and r.metrics == {"loss": 0.5}
            a, b = unpack_arrays(r.update.data)
            np.testing.assert_array_equal(a, np.ones((3, 4), np.float32))
            np.testing.assert_array_equal(b, np.arange(1, 6))
            assert r.task_id.startswith(f"{rnd}:{r.client}:")
    srv.shutdown_clients()
    for t in clients.threads:
        t.join(timeout=5)
        assert not t.is_alive(), "run_client should return when the server says done"
    assert not clients.errors


def test_large_payload_is_chunked_under_a_small_message_limit(servers, clients) -> None:
    limit = 4 << 20
    srv = servers(max_message_bytes=limit)
    clients.start(f"127.0.0.1:{srv.port}", plus_one, "big", max_message_bytes=limit)
    srv.wait_for_clients(1, timeout=10)
    params = enc([np.full(12_500_000, 2.0, np.float32)])  # 50 MB, 13+ messages each way
    (reply,) = exchange(srv.link, tasks_for(["big"], 0, params), deadline_s=30)
    (out,) = unpack_arrays(reply.update.data)
    assert out.shape == (12_500_000,) and float(out.min()) == float(out.max()) == 3.0


def test_client_error_comes_back_as_error_reply(servers, clients) -> None:
    def boom(task: Task) -> Reply:
        raise RuntimeError("out of memory")

    srv = servers()
    clients.start(f"127.0.0.1:{srv.port}", boom, "c0")
    srv.wait_for_clients(1, timeout=10)
    (r,) = exchange(srv.link, tasks_for(["c0"], 0, enc([])), deadline_s=10)
    assert r.error == "RuntimeError: out of memory" and r.update is None


def test_slow_client_past_deadline_does_not_block(servers, clients, caplog) -> None:
    caplog.set_level(logging.INFO, logger="fedkit.transport")

    def slow_in_round_0(task: Task) -> Reply:
        if task.round == 0:
            time.sleep(1.5)
        return plus_one(task)

    srv = servers()
    addr = f"127.0.0.1:{srv.port}"
    clients.start(addr, plus_one, "fast")
    clients.start(addr, slow_in_round_0, "slow")
    srv.wait_for_clients(2, timeout=10)
    params = enc([np.zeros(4, np.float32)])
    t0 = time.monotonic()
    replies = exchange(srv.link, tasks_for(["fast", "slow"], 0, params), deadline_s=0.5)
    assert time.monotonic() - t0 < 1.4
    assert [r.client for r in replies] == ["fast"]
    # the late reply is refused as stale, and the slow client serves the next round
    replies = exchange(srv.link, tasks_for(["fast", "slow"], 1, params), deadline_s=10)
    assert sorted(r.client for r in replies) == ["fast", "slow"]
    assert any("FAILED_PRECONDITION" in m and "is closed" in m for m in caplog.messages)


def test_killed_client_is_just_missing(servers, clients, tmp_path) -> None:
    srv = servers()
    addr = f"127.0.0.1:{srv.port}"
    clients.start(addr, plus_one, "ok0")
    clients.start(addr, plus_one, "ok1")
    code = textwrap.dedent(f"""
        import sys, time
        from fedkit.transport import run_client
        def fn(task):
            print("got task", flush=True)
            time.sleep(60)
        run_client({addr!r}, fn, name="victim", insecure=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        srv.wait_for_clients(3, timeout=20)
        done: list[list[Reply]] = []
        th = threading.Thread(
            target=lambda: done.append(
                exchange(srv.link, tasks_for(["ok0", "ok1", "victim"], 0, enc([])), deadline_s=8)
            )
        )
        t0 = time.monotonic()
        th.start()
        assert proc.stdout is not None and proc.stdout.readline().strip() == "got task"
        os.kill(proc.pid, signal.SIGKILL)
        th.join(timeout=15)
        assert not th.is_alive()
        assert time.monotonic() - t0 < 8.5
        assert sorted(r.client for r in done[0]) == ["ok0", "ok1"]
        # the server still serves everyone else
        assert srv.wait_for_clients(2, 5) == ["ok0", "ok1"]
        assert len(exchange(srv.link, tasks_for(["ok0", "ok1"], 1, enc([])), 10)) == 2
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_stale_and_unknown_replies_are_rejected(servers, raw, background, clients) -> None:
    srv = servers()
    clients.start(f"127.0.0.1:{srv.port}", plus_one, "good")
    rc = raw(srv.port, "c0")
    other = raw(srv.port, "c1")  # keeps round 1 open until it answers
    srv.wait_for_clients(3, timeout=10)
    params = enc([np.zeros(2, np.float32)])
    # round 0: c0 receives its task but answers too late
    fut = background.submit(exchange, srv.link, tasks_for(["c0", "good"], 0, params), 0.5)
    t0 = rc.next_task()
    assert [r.client for r in fut.result(timeout=10)] == ["good"]
    e = rpc_error(rc.push, rc.header(t0.task_id, 0))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert t0.task_id in e.details() and "round 0" in e.details()
    e = rpc_error(rc.push, rc.header("no-such-task", 0))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "no-such-task" in e.details()
    # round 1: a reply claiming the wrong round, then someone else's task, then the right one
    fut = background.submit(exchange, srv.link, tasks_for(["c0", "good", "c1"], 1, params), 10)
    t1 = rc.next_task()
    e = rpc_error(rc.push, rc.header(t1.task_id, 0))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "round 1" in e.details()
    e = rpc_error(rc.push, pb.ReplyChunk(header=pb.ReplyHeader(
        session_id=rc.session_id, task_id=t1.task_id, round=1, client="good"), last=True))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED
    e = rpc_error(rc.push, pb.ReplyChunk(header=pb.ReplyHeader(
        session_id="bogus", task_id=t1.task_id, round=1, client="c0"), last=True))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "rejoin" in e.details()
    ok = Reply(task_id=t1.task_id, client="c0", round=1, num_examples=3, update=params)
    assert rc.push(*reply_chunks(ok, session_id=rc.session_id)).task_id == t1.task_id
    e = rpc_error(rc.push, *reply_chunks(ok, session_id=rc.session_id))
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    t1b = other.next_task()
    other.push(*reply_chunks(Reply(task_id=t1b.task_id, client="c1", round=1),
                             session_id=other.session_id))
    replies = fut.result(timeout=15)
    assert sorted(r.client for r in replies) == ["c0", "c1", "good"]
    assert [r for r in replies if r.client == "c0"][0] == ok


def test_malformed_oversized_and_invalid_replies(servers, raw, background, clients, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="fedkit.transport")

    def validate(task: Task, reply: Reply) -> None:
        if reply.update is not None and len(unpack_arrays(reply.update.data)) != 1:
            raise ValueError("expected 1 tensor")

    srv = servers(max_payload_bytes=1 << 20, validate=validate)
    clients.start(f"127.0.0.1:{srv.port}", plus_one, "good")
    rc = raw(srv.port, "c0")
    srv.wait_for_clients(2, timeout=10)
    params = enc([np.zeros(2, np.float32)])

    def garbage(t):
        g = rc.header(t.task_id, t.round, has_update=True, payload_bytes=9, update_kind=pb.UPDATE_KIND_DELTA)
        g.data = b"not-a-frm"
        return [g]

    def truncated(t):
        r = Reply(task_id=t.task_id, client="c0", round=t.round, update=params)
        return list(reply_chunks(r, 8, rc.session_id))[:-1]

    def huge(t):
        r = Reply(task_id=t.task_id, client="c0", round=t.round, update=Encoded("identity", bytes(2 << 20)))
        return list(reply_chunks(r, 1 << 20, rc.session_id))

    def two(t):
        r = Reply(task_id=t.task_id, client="c0", round=t.round, update=enc([np.zeros(1), np.zeros(1)]))
        return list(reply_chunks(r, session_id=rc.session_id))

    cases = [
        (garbage, grpc.StatusCode.INVALID_ARGUMENT, "malformed payload"),
        (truncated, grpc.StatusCode.INVALID_ARGUMENT, "without a last chunk"),
        (huge, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
        (two, grpc.StatusCode.INVALID_ARGUMENT, "expected 1 tensor"),
    ]
    for rnd, (make_chunks, code, text) in enumerate(cases):
        fut = background.submit(exchange, srv.link, tasks_for(["c0", "good"], rnd, params), 30)
        t = rc.next_task()
        e = rpc_error(rc.push, *make_chunks(t))
        assert e.code() == code and text in e.details()
        start = time.monotonic()
        replies = fut.result(timeout=10)
        assert [r.client for r in replies] == ["good"]  # the rejected one is not returned
        assert time.monotonic() - start < 5  # ...and its task is settled: no wait for the deadline
        # a task is answered once: another try at it is refused as stale
        again = rpc_error(rc.push, *two(t))
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sum("rejected reply from 'c0'" in m or "rejected reply from c0" in m
               for m in caplog.messages) >= 4


def test_server_restart_client_reconnects(servers, clients) -> None:
    first = servers()
    port = first.port
    clients.start(f"127.0.0.1:{port}", plus_one, "c0", backoff=(0.05, 0.3))
    first.wait_for_clients(1, timeout=10)
    assert len(exchange(first.link, tasks_for(["c0"], 0, enc([])), 10)) == 1
    first.stop(grace=0.1)
    second = servers(listen=f"127.0.0.1:{port}")
    assert second.wait_for_clients(1, timeout=10) == ["c0"]
    (r,) = exchange(second.link, tasks_for(["c0"], 1, enc([np.ones(3)])), 10)
    np.testing.assert_array_equal(unpack_arrays(r.update.data)[0], np.full(3, 2.0))
    assert not clients.errors


def test_second_join_is_refused_while_the_first_session_lives(servers, raw) -> None:
    srv = servers()
    old = raw(srv.port, "c0")
    e = rpc_error(lambda: raw(srv.port, "c0"))  # no certificate to prove it is the same device
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS and "live session" in e.details()
    assert srv.link.clients() == ["c0"]
    assert exchange(srv.link, tasks_for(["c0"], 0, enc([])), 0.2) == []  # old still holds the name
    assert old.next_task().client == "c0"


def test_split_is_reserved_and_unimplemented(servers, raw) -> None:
    srv = servers()
    rc = raw(srv.port, "c0")
    e = rpc_error(lambda: list(rc.stub.Split(iter([pb.SplitMessage()]), metadata=rc.md)))
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED


def test_missing_clients_and_bad_tasks(servers) -> None:
    srv = servers()
    assert exchange(srv.link, tasks_for(["ghost"], 0, enc([])), deadline_s=1) == []
    with pytest.raises(ValueError, match="addressed to"):
        exchange(srv.link, {"a": Task(round=0, client="b", kind="train", params=enc([]))}, 1)
    with pytest.raises(TimeoutError, match="0 of 1"):
        srv.wait_for_clients(1, timeout=0.2)


def test_plaintext_needs_explicit_consent_and_is_logged(caplog) -> None:
    with pytest.raises(ValueError, match="insecure=True"):
        GrpcServer()
    caplog.set_level(logging.WARNING, logger="fedkit.transport")
    srv = GrpcServer(insecure=True)
    try:
        srv.start()
    finally:
        srv.stop()
    assert any("PLAINTEXT" in m for m in caplog.messages)


def test_second_process_under_the_same_name_gives_up_and_the_first_keeps_serving(servers, clients, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="fedkit.transport")
    srv = servers()
    addr = f"127.0.0.1:{srv.port}"
    first = clients.start(addr, plus_one, "twin")
    srv.wait_for_clients(1, timeout=10)
    second = clients.start(addr, plus_one, "twin", wait_s=0.5)
    second.join(timeout=10)
    assert not second.is_alive() and isinstance(clients.errors[-1], ConnectionError)
    assert "ALREADY_EXISTS" in str(clients.errors[-1])
    assert any("client twin: ALREADY_EXISTS" in m for m in caplog.messages)
    assert first.is_alive()
    assert len(exchange(srv.link, tasks_for(["twin"], 0, enc([])), 10)) == 1


def test_attacker_text_is_truncated_and_metrics_must_be_plain_finite_numbers(
    servers, raw, background, caplog
) -> None:
    from fedkit.compression import decode

    caplog.set_level(logging.WARNING, logger="fedkit.transport")

    def validate(task: Task, reply: Reply) -> None:
        if reply.update is not None:
            try:
                decode(reply.update, like=[np.zeros(2, np.float32)])
            except Exception as e:  # noqa: BLE001  (the engine's acceptance rule does the same)
                raise ValueError(str(e)) from None

    srv = servers(validate=validate)
    rc = raw(srv.port, "c0")
    srv.wait_for_clients(1, timeout=10)
    params = enc([np.zeros(2, np.float32)])
    long_codec = "q" * 65_535

    def reply(t, **kw):
        return list(reply_chunks(Reply(task_id=t.task_id, client="c0", round=t.round, num_examples=1, **kw),
                                 session_id=rc.session_id))

    cases = [
        ({"update": Encoded(long_codec, b"")}, "65535 chars"),
        ({"update": params, "metrics": {"m" * 5000: 1.0}}, "metric name"),
        ({"update": params, "metrics": {"loss": float("nan")}}, "finite number"),
        ({"update": params, "metrics": {f"m{i}": 1.0 for i in range(1000)}}, "at most 64"),
    ]
    for rnd, (kw, text) in enumerate(cases):
        fut = background.submit(exchange, srv.link, tasks_for(["c0"], rnd, params), 30)
        t = rc.next_task()
        e = rpc_error(rc.push, *reply(t, **kw))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and text in e.details(), e.details()[:300]
        assert len(e.details()) < 1_200
        assert fut.result(timeout=10) == []
    assert caplog.messages and max(len(m) for m in caplog.messages) < 1_500
    # a plain, finite metric set still passes
    fut = background.submit(exchange, srv.link, tasks_for(["c0"], 9, params), 30)
    t = rc.next_task()
    rc.push(*reply(t, update=params, metrics={"loss": 0.5, "train/acc": 1}))
    (r,) = fut.result(timeout=10)
    assert r.metrics == {"loss": 0.5, "train/acc": 1.0}


def test_session_cap_and_tokens_work_without_tls_and_plaintext_still_warns(servers, raw, clients, caplog) -> None:
    from fedkit.transport import TokenAuth

    caplog.set_level(logging.WARNING, logger="fedkit.transport")
    toks = {f"c{i}": f"t{i}" for i in range(3)}
    srv = servers(insecure=True, auth=TokenAuth.from_tokens(toks), max_sessions=2)
    assert any("PLAINTEXT" in m for m in caplog.messages)
    first = raw(srv.port, "c0", "t0")
    raw(srv.port, "c1", "t1")
    assert rpc_error(raw, srv.port, "sybil", "t0").code() == grpc.StatusCode.UNAUTHENTICATED
    full = rpc_error(raw, srv.port, "c2", "t2")
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 of 2 sessions" in full.details()
    clients.start(f"127.0.0.1:{srv.port}", plus_one, "c2", token="t2")  # retries while full
    first.close()  # a slot frees up
    _deadline = time.monotonic() + 10
    while "c2" not in srv.link.clients():
        assert time.monotonic() < _deadline, "the waiting client never got the free slot"
        time.sleep(0.05)
    assert sorted(srv.link.clients()) == ["c1", "c2"] and not clients.errors
    with pytest.raises(ValueError, match="max_sessions must be at least 1"):
        GrpcServer(insecure=True, max_sessions=0)
