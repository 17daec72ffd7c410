"""Shared fixtures: servers and clients that always shut down, and a raw stub-level client."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from fedkit.compression.frame import pack_arrays, unpack_arrays
from fedkit.runtime.link import gather
from fedkit.transport import GrpcServer, run_client
from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport._proto import fedkit_pb2_grpc as pb_grpc
from fedkit.transport.security import client_metadata
from fedkit.transport.serde import Reassembler, task_from_proto
from fedkit.types import Encoded, Reply, Task


def enc(arrays: list[np.ndarray]) -> Encoded:
    return Encoded("identity", pack_arrays(arrays))


def plus_one(task: Task) -> Reply:
    """Dummy client: the update is params + 1."""
    params = unpack_arrays(task.params.data)
    return Reply(
        task_id=task.task_id,
        client=task.client,
        round=task.round,
        num_examples=10,
        update=enc([p + 1 for p in params]),
        metrics={"loss": 0.5},
    )


def exchange(link: Any, tasks: dict[str, Task], deadline_s: float | None) -> list[Reply]:
    """Send ``tasks`` and return the replies that came back by the deadline, in task order."""
    for cid, t in tasks.items():
        if t.client != cid:
            raise ValueError(f"task for {cid!r} is addressed to {t.client!r}")
    deadline = None if deadline_s is None else link.now() + deadline_s
    got = {a.task.client: a.reply for a in gather(link, list(tasks.values()), deadline)}
    return [r for c in tasks if (r := got.get(c)) is not None]


def tasks_for(names: list[str], rnd: int, params: Encoded, **kw: Any) -> dict[str, Task]:
    return {c: Task(round=rnd, client=c, kind="train", params=params, **kw) for c in names}


@pytest.fixture
def servers() -> Iterator[Callable[..., GrpcServer]]:
    """Factory for started servers; every one is stopped at teardown."""
    made: list[GrpcServer] = []

    def make(**kw: Any) -> GrpcServer:
        kw.setdefault("insecure", "tls" not in kw)
        kw.setdefault("heartbeat_s", 1.0)
        srv = GrpcServer(kw.pop("listen", "127.0.0.1:0"), **kw)
        made.append(srv)
        srv.start()
        return srv

    try:
        yield make
    finally:
        for srv in made:
            srv.stop(grace=0.2)


class Clients:
    """run_client threads sharing one stop event; joined at teardown."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, address: str, fn: Callable[[Task], Reply], name: str, **kw: Any) -> threading.Thread:
        kw.setdefault("insecure", "tls" not in kw)
        kw.setdefault("backoff", (0.05, 0.5))

        def target() -> None:
            try:
                run_client(address, fn, name=name, stop=self.stop, **kw)
            except BaseException as e:  # noqa: BLE001  (surfaced to the test)
                self.errors.append(e)

        t = threading.Thread(target=target, name=f"client-{name}", daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    try:
        yield c
    finally:
        c.close()


class RawClient:
    """A hand-driven client on the generated stub, for crafting bad or stale replies."""

    def __init__(self, port: int, name: str, token: str | None = None) -> None:
        self.name = name
        self.md = client_metadata(name, token)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.FedKitStub(self.channel)
        self.call = self.stub.Join(pb.JoinRequest(name=name), metadata=self.md)
        self.messages = iter(self.call)
        self.welcome = next(self.messages).welcome
        self.session_id = self.welcome.session_id

    def next_task(self) -> Task:
        r = Reassembler(what="task")
        for msg in self.messages:
            if msg.WhichOneof("body") == "task" and r.feed(msg.task):
                return task_from_proto(r.header, r.encoded())  # type: ignore[arg-type]
        raise AssertionError("stream ended without a task")

    def push(self, *chunks: pb.ReplyChunk) -> pb.Ack:
        return self.stub.PushReply(iter(chunks), metadata=self.md, timeout=10)

    def header(self, task_id: str, rnd: int, **kw: Any) -> pb.ReplyChunk:
        h = pb.ReplyHeader(session_id=self.session_id, task_id=task_id, round=rnd, client=self.name, **kw)
        return pb.ReplyChunk(header=h, last=True)

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    made: list[RawClient] = []

    def make(port: int, name: str, token: str | None = None) -> RawClient:
        c = RawClient(port, name, token)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


@pytest.fixture
def background() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Runs a blocking exchange while the test plays the client."""
    ex = concurrent.futures.ThreadPoolExecutor(2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
