"""fedkit aggregators as Flower strategies, inside a real Flower simulation (Ray, 2 CPUs): the
aggregate equals fedkit's own aggregator on the same updates, robust ones included, through
both Flower strategy interfaces.

One simulation serves the whole module (Flower's Ray backend starts Ray for a run and shuts it
down after): its ServerApp runs every strategy in turn against the same five nodes, whose
updates are distinct multiples of 1/4 (exact in float32, so no result depends on summation
order, and no Krum score ties). Node 4 is an outlier the robust aggregators must ignore.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower interop needs the extra: pip install 'fedkit[flower]'")
pytest.importorskip("ray", reason="Flower's simulation needs Ray: pip install 'fedkit[flower]'")

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins  # noqa: E402
from flwr.server import ServerConfig  # noqa: E402
from flwr.server.compat import start_grid  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from fedkit.aggregation import make_aggregator  # noqa: E402
from fedkit.compat.flower import FedkitLegacyStrategy, FedkitStrategy  # noqa: E402
from fedkit.types import Update  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::FutureWarning:ray")]

NODES = 5
ROUNDS = 2
SHAPES = [(2, 3), (3,)]
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedadam": {"lr": 0.5},
    "fedmedian": {},
    "fedtrimmedavg": {"beta": 0.2},
    "krum": {"f": 1},
    "multikrum": {"f": 1, "m": 2},
}
BACKEND = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2, "include_dashboard": False}}


def examples(pid: int) -> int:
    return 10 * (pid + 1)


def update(pid: int, rnd: int) -> list[np.ndarray]:
    """Node ``pid``'s update in round ``rnd``: honest ones near each other, node 4 far off."""
    scale = 50.0 if pid == NODES - 1 else 0.25 * (pid + 1) ** 2 * rnd
    pattern = [np.arange(1, 7, dtype=np.float32).reshape(2, 3) / 4, np.array([1, -1, 2], np.float32)]
    return [p * np.float32(scale) for p in pattern]


def _local(glob: list[np.ndarray], pid: int, rnd: int) -> list[np.ndarray]:
    return [g + u for g, u in zip(glob, update(pid, rnd), strict=True)]


def client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        pid = int(ctx.node_config["partition-id"])
        if "fitins.parameters" in msg.content.array_records:  # the legacy interface's records
            ins = recorddict_to_fitins(msg.content, keep_input=True)
            rnd = int(ins.config["server-round"])
            local = _local(parameters_to_ndarrays(ins.parameters), pid, rnd)
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(local), examples(pid), {})
            return Message(fitres_to_recorddict(res, keep_input=False), reply_to=msg)
        rnd = int(msg.content["config"]["server-round"])
        local = _local(msg.content["arrays"].to_numpy_ndarrays(), pid, rnd)
        content = RecordDict({"arrays": ArrayRecord(local),
                              "metrics": MetricRecord({"num-examples": examples(pid), "pid": pid})})
        return Message(content, reply_to=msg)

    return app


def zeros() -> list[np.ndarray]:
    return [np.zeros(s, np.float32) for s in SHAPES]


@pytest.fixture(scope="module")
def simulated() -> dict[str, Any]:
    out: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name, params in STRATEGIES.items():
            strategy = FedkitStrategy(make_aggregator(name, **params), min_nodes=NODES)
            result = strategy.start(grid, ArrayRecord(zeros()), num_rounds=ROUNDS)
            out[name] = result.arrays.to_numpy_ndarrays()
            out[f"{name}/rounds"] = strategy.rounds
        legacy = FedkitLegacyStrategy(make_aggregator("fedadam", lr=0.5), zeros(), min_clients=NODES)
        start_grid(grid=grid, strategy=legacy, config=ServerConfig(num_rounds=ROUNDS))
        out["legacy fedadam"] = legacy.core.state.params

    try:
        run_simulation(server, client_app(), num_supernodes=NODES, backend_config=BACKEND)  # type: ignore[arg-type]
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    return out


def fedkit_reference(name: str, params: dict[str, Any]) -> list[np.ndarray]:
    agg = make_aggregator(name, **params)
    x = zeros()
    state = agg.init(x)
    for rnd in range(1, ROUNDS + 1):
        ups = [Update(f"c{pid}", update(pid, rnd), examples(pid)) for pid in range(NODES)]
        state, x = agg.step(state, x, ups)
    return x


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_flower_run_aggregates_as_fedkit_does(simulated: dict[str, Any], name: str) -> None:
    want = fedkit_reference(name, STRATEGIES[name])
    got = simulated[name]
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), (got, want)
    rounds = simulated[f"{name}/rounds"]
    assert [r.clients_sampled for r in rounds] == [NODES] * ROUNDS
    assert [r.clients_finished for r in rounds] == [NODES] * ROUNDS


def test_fedavg_by_hand(simulated: dict[str, Any]) -> None:
    x = [np.zeros(s) for s in SHAPES]
    n = np.array([examples(p) for p in range(NODES)], float)
    for rnd in range(1, ROUNDS + 1):
        for k in range(len(SHAPES)):
            x[k] = x[k] + sum(n[p] * update(p, rnd)[k] for p in range(NODES)) / n.sum()
    assert all(np.allclose(a, b, rtol=1e-6) for a, b in zip(simulated["fedavg"], x, strict=True))


def test_robust_strategies_leave_the_outlier_out(simulated: dict[str, Any]) -> None:
    honest_max = sum(max(float(np.abs(a).max()) for p in range(NODES - 1) for a in update(p, rnd))
                     for rnd in range(1, ROUNDS + 1))  # no honest client went further
    for name in ("fedmedian", "fedtrimmedavg", "krum", "multikrum"):
        assert max(float(np.abs(a).max()) for a in simulated[name]) < honest_max, name
    assert max(float(np.abs(a).max()) for a in simulated["fedavg"]) > honest_max  # FedAvg is pulled


def test_the_legacy_interface_aggregates_alike(simulated: dict[str, Any]) -> None:
    want = fedkit_reference("fedadam", {"lr": 0.5})
    got = simulated["legacy fedadam"]
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
