"""fedkit codecs as Flower client mods: real byte savings on Flower's serialized messages, and
the server reads the update back (FedkitStrategy natively, any Flower strategy via Decoding)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower interop needs the extra: pip install 'fedkit[flower]'")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fedkit import rng as frng  # noqa: E402
from fedkit.aggregation import make_aggregator  # noqa: E402
from fedkit.compat.flower import Decoding, FedkitStrategy, message_nbytes, record_frame, uplink_mod  # noqa: E402
from fedkit.compat.flower.mods import reply_delta  # noqa: E402
from fedkit.compression import decode, make  # noqa: E402
from fedkit.types import Update  # noqa: E402

SPEC = "topk(ratio=0.1)|quant(bits=8)|zstd"
SHAPES = [(64, 64), (64,), (10, 64), (10,)]  # an MLP's worth: 4,810 floats
NODES = 3
BACKEND = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2, "include_dashboard": False}}


def delta(pid: int) -> list[np.ndarray]:
    g = np.random.default_rng(pid)
    return [g.standard_normal(s).astype(np.float32) * np.float32(0.01) for s in SHAPES]


def zeros() -> list[np.ndarray]:
    return [np.zeros(s, np.float32) for s in SHAPES]


def local_train(msg: Message, ctx: Context) -> Message:
    """A Flower client's training: it returns its local model, as Flower clients do."""
    pid = int(ctx.node_config["partition-id"])
    glob = msg.content["arrays"].to_numpy_ndarrays()
    local = [g + d for g, d in zip(glob, delta(pid), strict=True)]
    content = RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": 10 * (pid + 1)})})
    return Message(content, reply_to=msg)


def _train_message(arrays: list[np.ndarray], rnd: int) -> Message:
    md = Metadata(run_id=0, message_id="m", src_node_id=1, dst_node_id=2, reply_to_message_id="",
                  group_id=str(rnd), created_at=time.time(), ttl=3600.0, message_type="train")
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": rnd})})
    return Message(content, metadata=md)  # type: ignore[call-overload]


def test_the_mod_sends_fedkits_frame_and_the_server_decodes_it() -> None:
    ctx = Context(run_id=0, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    msg = _train_message(zeros(), 1)
    plain = local_train(msg, ctx)
    sent = uplink_mod(SPEC)(msg, ctx, local_train)
    enc = record_frame(sent.content["arrays"])
    assert enc is not None and enc.codec == make(SPEC).spec
    assert message_nbytes(sent) * 5 < message_nbytes(plain)
    got = reply_delta(sent.content, zeros())
    want = make(SPEC).decode(make(SPEC).encode(None, delta(0), frng.rng(0, "uplink", 1, "0"))[1])
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    kept = np.concatenate([(g != 0).ravel() for g in got]).mean()
    assert 0.09 < kept <= 0.11  # top-10% of each tensor, quantised to 8 bits
    assert not ctx.state.array_records  # a stateless codec keeps nothing


def test_error_feedback_memory_rides_in_the_context() -> None:
    ctx = Context(run_id=0, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    mod = uplink_mod("ef:topk(ratio=0.1)")
    sent = [record_frame(mod(_train_message(zeros(), r), ctx, local_train).content["arrays"]) for r in (1, 2)]
    assert "fedkit.codec.arrays" in ctx.state.array_records
    total = [a + b for a, b in zip(decode(sent[0]), decode(sent[1]), strict=True)]  # type: ignore[arg-type]
    # what round 1 dropped is sent in round 2: more of the two-round sum than 2 x top-10%
    assert np.count_nonzero(total[0]) > 1.2 * np.count_nonzero(decode(sent[0])[0])  # type: ignore[arg-type]


def test_a_bad_spec_fails_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        uplink_mod("topkk(ratio=0.1)")


@pytest.fixture(scope="module")
def simulated() -> dict[str, Any]:
    pytest.importorskip("ray", reason="Flower's simulation needs Ray: pip install 'fedkit[flower]'")
    from flwr.simulation import run_simulation

    client = ClientApp()
    client.train(mods=[uplink_mod(SPEC)])(local_train)  # what the Flower app sends
    client.train("plain")(local_train)  # the same training without the mod: the baseline
    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedkitStrategy(make_aggregator("fedavg"), min_nodes=NODES, count_wire_bytes=True)
        out["fedkit"] = strategy.start(grid, ArrayRecord(zeros()), num_rounds=1).arrays.to_numpy_ndarrays()
        out["wire"] = strategy.rounds[0]
        flower = Decoding(FedAvg(fraction_evaluate=0.0, min_train_nodes=NODES, min_available_nodes=NODES))
        out["flower"] = flower.start(grid, ArrayRecord(zeros()), num_rounds=1).arrays.to_numpy_ndarrays()
        record = RecordDict({"arrays": ArrayRecord(zeros()), "config": ConfigRecord({"server-round": 1})})
        plain = grid.send_and_receive(
            [Message(record, dst_node_id=n, message_type="train.plain") for n in grid.get_node_ids()], timeout=120
        )
        out["plain"] = [message_nbytes(m) for m in plain]

    try:
        run_simulation(server, client, num_supernodes=NODES, backend_config=BACKEND)  # type: ignore[arg-type]
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    return out


def _expected() -> list[np.ndarray]:
    """fedkit's FedAvg of the frames the clients must have sent (round 1, rng per partition)."""
    codec = make(SPEC)
    ups = [Update(str(p), codec.decode(codec.encode(None, delta(p), frng.rng(0, "uplink", 1, str(p)))[1]), 10 * (p + 1))
           for p in range(NODES)]
    agg = make_aggregator("fedavg")
    return agg.step(agg.init(zeros()), zeros(), ups)[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::FutureWarning:ray")
def test_a_flower_simulation_saves_bytes_on_its_own_messages(simulated: dict[str, Any]) -> None:
    wire = simulated["wire"]
    assert wire.clients_finished == NODES
    per_reply = wire.wire_bytes_up / NODES
    plain = simulated["plain"]
    assert len(plain) == NODES
    assert per_reply * 5 < min(plain), (per_reply, plain)  # >5x fewer bytes on Flower's wire
    want = _expected()
    for who in ("fedkit", "flower"):  # the natively decoding and the wrapped Flower strategy
        got = simulated[who]
        assert all(np.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(got, want, strict=True)), who
