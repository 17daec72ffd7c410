"""Every codec in a scenario, in-process and over loopback gRPC: same params, same bytes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from fedkit.experiment import inprocess_link, run_with_link
from fedkit.runtime.client import ClientHost
from fedkit.scenario import validate
from fedkit.scenario.build import build
from fedkit.transport import GrpcServer
from fedkit.transport.client import run_client
from tests.conftest import tiny_raw

UPLINKS = [
    "fp16", "bf16", "zstd", "quant(bits=8)", "quant(bits=3,stochastic=true)", "qsgd(levels=7)",
    "ef:sign", "ef:kmeans(clusters=4)", "ef:topk(ratio=0.1)", "topk(ratio=0.1,scope=global)",
    "randk(ratio=0.2,scale=true)", "ef:powersgd(rank=2)", "ef:topk(ratio=0.05)|quant(bits=8)|zstd",
    "ef:adaptive(family=powersgd,candidates=[1,2,4],uniform=2)",
]


def _raw(uplink: str) -> dict:
    return tiny_raw(rounds=2, clients={"count": 3, "per_round": {"fraction": 1.0}},
                    compression={"uplink": uplink})


@pytest.mark.parametrize("uplink", UPLINKS)
def test_codec_runs_identically_in_process_and_over_grpc(uplink: str, tmp_path: Path) -> None:
    # the kernels every mode runs with (run_scenario and deploy set it): whether an earlier test
    # in this process already did must not decide which float reductions torch picks
    torch.set_num_threads(1)
    exp = build(validate(_raw(uplink)))
    local = run_with_link(exp.scenario, exp.plan, exp.init_params, inprocess_link(exp.clients), tmp_path / "local")
    assert local["ratio_up"] > 1.0 if uplink != "zstd" else local["ratio_up"] > 0.9

    exp = build(validate(_raw(uplink)))  # fresh client state (error-feedback memory)
    server = GrpcServer("127.0.0.1:0", insecure=True)
    port = server.start()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=run_client,
            args=(f"127.0.0.1:{port}", ClientHost(c)),
            kwargs={"name": c.id, "insecure": True, "stop": stop},
            daemon=True,
        )
        for c in exp.clients.values()
    ]
    try:
        for t in threads:
            t.start()
        server.wait_for_clients(3, 30)
        remote = run_with_link(exp.scenario, exp.plan, exp.init_params, server.link, tmp_path / "remote")
    finally:
        server.shutdown_clients()
        stop.set()
        server.stop()
        for t in threads:
            t.join(10)
    assert remote["params_sha256"] == local["params_sha256"]
    assert remote["total_bytes_up"] == local["total_bytes_up"]
    assert remote["total_bytes_down"] == local["total_bytes_down"]
    # the transport's own bytes (headers, framing, joins) come on top, estimated alike in-process:
    # in-process assumes a bearer token on each join (66 B per client); this server takes none
    n_msgs = 2 * 3  # rounds x clients, each way
    token = 66 * 3
    for d, most in (("up", 600), ("down", 1500)):  # per message, joins included
        wire, payload = remote[f"total_wire_bytes_{d}"], remote[f"total_bytes_{d}"]
        assert payload < wire < payload + most * n_msgs
        assert abs(local[f"total_wire_bytes_{d}"] - wire) <= 0.02 * wire + (token if d == "up" else 0)
