"""Reported wire bytes are what a counting TCP proxy sees, and in-process runs report the same.

The proxy is plain asyncio: it relays each connection to the real server and counts the bytes
of each direction. The run uses a compressed uplink, where the transport's overhead is most
of the upstream traffic, so an estimate that leaves anything out would miss by far more than 2%.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from fedkit.experiment import inprocess_link, run_with_link
from fedkit.runtime.client import ClientHost
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.transport import GrpcServer
from fedkit.transport.client import run_client
from fedkit.transport.security import TokenAuth, new_token
from tests.conftest import tiny_raw

pytestmark = pytest.mark.timeout(120)

UPLINK = "ef:topk(ratio=0.05)|quant(bits=8)|zstd"
TOLERANCE = 0.02  # proxy vs reported, each direction
MODES_TOLERANCE = 0.02  # in-process estimate vs gRPC run, each direction


class CountingProxy:
    """127.0.0.1 TCP relay in front of ``target``; ``down`` / ``up`` count relayed bytes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.up = self.down = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(r, tw, "up"), self._pipe(tr, w, "down"))

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, direction: str) -> None:
        try:
            while data := await r.read(1 << 16):
                setattr(self, direction, getattr(self, direction) + len(data))
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def _raw() -> dict[str, Any]:
    return tiny_raw(rounds=4, clients={"count": 3, "per_round": {"fraction": 1.0}},
                    compression={"uplink": UPLINK}, evaluation={"federated": True})


def _close(reported: int, measured: int, tol: float) -> bool:
    return abs(reported - measured) <= tol * measured


def test_reported_wire_bytes_match_a_counting_proxy_and_the_in_process_estimate(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the kernels every mode runs with: identical params across modes
    exp = build(validate(_raw()))
    tokens = {c: new_token() for c in exp.clients}  # as `fedkit certs` issues them
    server = GrpcServer("127.0.0.1:0", insecure=True, auth=TokenAuth.from_tokens(tokens))
    port = server.start()
    proxy = CountingProxy(port)
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_client, args=(f"127.0.0.1:{proxy.port}", ClientHost(c)),
                         kwargs={"name": c.id, "insecure": True, "stop": stop, "token": tokens[c.id]},
                         daemon=True)
        for c in exp.clients.values()
    ]
    try:
        for t in threads:
            t.start()
        server.wait_for_clients(3, 30)
        remote = run_with_link(exp.scenario, exp.plan, exp.init_params, server.link, tmp_path / "grpc")
    finally:
        server.shutdown_clients()
        stop.set()
        for t in threads:
            t.join(10)
        server.stop()
        proxy.close()
    down, up = remote["total_wire_bytes_down"], remote["total_wire_bytes_up"]
    assert _close(down, proxy.down, TOLERANCE), (down, proxy.down)
    assert _close(up, proxy.up, TOLERANCE), (up, proxy.up)
    # the point of counting: upstream, the framing costs more than the compressed payload
    assert up > 2 * remote["total_bytes_up"]
    assert remote["wire_ratio_up"] < remote["ratio_up"] / 2

    exp = build(validate(_raw()))
    local = run_with_link(exp.scenario, exp.plan, exp.init_params, inprocess_link(exp.clients), tmp_path / "local")
    assert local["params_sha256"] == remote["params_sha256"]
    for d in ("down", "up"):
        assert local[f"total_bytes_{d}"] == remote[f"total_bytes_{d}"]
        assert _close(local[f"total_wire_bytes_{d}"], remote[f"total_wire_bytes_{d}"], MODES_TOLERANCE), d
        assert local[f"wire_ratio_{d}"] == pytest.approx(remote[f"wire_ratio_{d}"], rel=MODES_TOLERANCE)


@pytest.mark.parametrize("payload, chunk", [(0, 64), (5, 64), (64, 64), (1000, 64), (300_000, 1 << 16)])
def test_in_process_message_sizes_are_the_real_protobuf_sizes(payload: int, chunk: int) -> None:
    """The in-process estimate computes chunk sizes without building messages: exactly."""
    from fedkit.transport._proto import fedkit_pb2 as pb
    from fedkit.transport.overhead import chunk_messages
    from fedkit.transport.serde import reply_chunks, reply_to_proto, task_chunks, task_to_proto
    from fedkit.types import Encoded, Reply, Task

    enc = Encoded("identity", bytes(max(payload - 14, 0)))
    task = Task(round=3, client="client-7", kind="train", params=enc, config={"seed": 1}, task_id="r3.0.train.client-7")
    real = [pb.ServerMessage(task=c).ByteSize() for c in task_chunks(task, chunk)]
    assert chunk_messages(task_to_proto(task, enc.nbytes).ByteSize(), enc.nbytes, chunk, wrapped=True) == real
    reply = Reply(task.task_id, "client-7", 3, 10, update=enc if payload else None, metrics={"train_loss": 0.5})
    size = enc.nbytes if payload else 0
    real = [c.ByteSize() for c in reply_chunks(reply, chunk, "0" * 32)]
    header = reply_to_proto(reply, size, "0" * 32).ByteSize()
    assert chunk_messages(header, size, chunk, wrapped=False) == real
