"""Bad LoRA adapter updates over gRPC: a tensor too many (a name the adapter does not have), the
wrong rank, a frozen factor sent (ffa's A never travels up) are refused with INVALID_ARGUMENT by the same acceptance
rule the engine uses (the scenario's plan), while the other client goes on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedkit.compression.frame import unpack_arrays
from fedkit.runtime.accept import Rejected, accept
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.transport.serde import reply_chunks
from fedkit.types import Reply, Task

from .conftest import enc, exchange, tasks_for

pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).parents[1] / "peft"))
from test_lora_mlp import raw as lora_raw  # noqa: E402


def _plan(agg: str) -> Any:
    r = lora_raw()
    return build(validate(lora_raw(peft={**r["peft"], "aggregation": agg}))).plan


def test_bad_adapter_updates_are_refused_while_the_other_client_goes_on(servers, raw, background, clients) -> None:
    plan = _plan("ffa")  # adapter: lora_A (4, 64) frozen, lora_B (32, 4), head (10, 32), (10,)

    def check(task: Task, reply: Reply) -> Any:
        try:
            return accept(plan.acceptance, task, reply)
        except Rejected as e:
            raise ValueError(str(e)) from None

    def good(task: Task) -> Reply:  # trains B and the head only and sends only those, as ffa asks
        params = unpack_arrays(task.params.data)
        delta = [np.full_like(p, 0.01) for p in params[1:]]
        return Reply(task_id=task.task_id, client=task.client, round=task.round, num_examples=10,
                     update=enc(delta))

    srv = servers(validate=check)
    clients.start(f"127.0.0.1:{srv.port}", good, "good")
    rc = raw(srv.port, "bad")
    srv.wait_for_clients(2, timeout=10)
    shapes = [(4, 64), (32, 4), (10, 32), (10,)]
    params = enc([np.zeros(s, np.float32) for s in shapes])
    ok = [np.zeros(s, np.float32) for s in shapes[1:]]  # what an ffa client sends: B and the head
    cases = [
        (ok + [np.zeros((3,), np.float32)], "payload declares 4 tensors, the model has 3"),  # an unknown tensor
        ([np.zeros((32, 2), np.float32)] + ok[1:],
         "tensor 0 declared as (32, 2) float32, the model has (32, 4)"),  # rank 2, the adapter has 4
        ([np.ones((4, 64), np.float32)] + ok, "payload declares 4 tensors, the model has 3"),  # frozen A sent
    ]
    for rnd, (delta, text) in enumerate(cases):
        fut = background.submit(exchange, srv.link, tasks_for(["bad", "good"], rnd, params), 30)
        t = rc.next_task()
        r = Reply(task_id=t.task_id, client="bad", round=t.round, num_examples=10, update=enc(delta))
        with pytest.raises(grpc.RpcError) as e:
            rc.push(*reply_chunks(r, session_id=rc.session_id))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in e.value.details()
        assert [x.client for x in fut.result(timeout=10)] == ["good"]


def test_flexlora_updates_must_have_the_clients_own_rank() -> None:
    r = lora_raw()
    prof = {"compute": {"samples_per_s": 100}, "up_mbps": 10, "down_mbps": 10}
    s = validate(lora_raw(peft={**r["peft"], "aggregation": "flexlora"},
                          devices={"profiles": {"small": prof | {"lora_rank": 2}, "big": prof | {"lora_rank": 4}},
                                   "assign": {"small": 0.34, "big": 0.66}}))
    plan = build(s).plan
    small = next(c for c, m in plan.models.items() if m.spec["peft"]["lora"]["r"] == 2)
    task = Task(round=1, client=small, kind="train", params=enc([]), task_id="t")

    def reply(*shapes: tuple[int, ...]) -> Reply:
        delta = [np.zeros(x, np.float32) for x in [*shapes, (10, 32), (10,)]]
        return Reply(task_id="t", client=small, round=1, num_examples=5, update=enc(delta))

    assert accept(plan.acceptance, task, reply((2, 64), (32, 2))).client == small
    with pytest.raises(Rejected, match=r"tensor 0 declared as \(4, 64\) float32, the model has \(2, 64\)"):
        accept(plan.acceptance, task, reply((4, 64), (32, 4)))  # the server's rank, not this client's
