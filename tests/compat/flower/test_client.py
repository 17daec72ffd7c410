"""Existing Flower client code joins a fedkit server unchanged: a NumPyClient (and the same code
as a ClientApp or client_fn) trains through fedkit's in-process engine and over its gRPC server."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("flwr", reason="Flower interop needs the extra: pip install 'fedkit[flower]'")

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.client import NumPyClient  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedkit.compat.flower import flower_host, uplink_mod  # noqa: E402
from fedkit.compression import decode  # noqa: E402
from fedkit.deploy import ServerOptions, serve  # noqa: E402
from fedkit.experiment import run_with_link  # noqa: E402
from fedkit.runtime.server import make_tasks  # noqa: E402
from fedkit.scenario import validate  # noqa: E402
from fedkit.scenario.build import build, build_server, initial_state  # noqa: E402
from fedkit.sim.link import InProcessLink  # noqa: E402
from fedkit.transport.client import run_client  # noqa: E402
from tests.conftest import tiny_raw  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def _one_thread():  # as fedkit's run_scenario and deploy.join set it: no oversubscription
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- what a Flower user already has (a typical PyTorch NumPyClient) ---------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class DigitsClient(NumPyClient):
    def __init__(self, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
        self.net = Net()
        self.train_set = torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y))
        self.x_test, self.y_test = torch.tensor(x_test), torch.tensor(y_test)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [v.detach().cpu().numpy() for v in self.net.state_dict().values()]

    def _set(self, parameters: list[np.ndarray]) -> None:
        keys = self.net.state_dict().keys()
        self.net.load_state_dict(OrderedDict((k, torch.tensor(v)) for k, v in zip(keys, parameters, strict=True)))

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        self._set(parameters)
        opt = torch.optim.SGD(self.net.parameters(), lr=float(config["lr"]))
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=int(config["batch_size"]), shuffle=True)
        total = 0.0
        for _ in range(int(config["epochs"])):
            for xb, yb in loader:
                opt.zero_grad()
                loss = F.cross_entropy(self.net(xb), yb)
                loss.backward()
                opt.step()
                total += loss.item()
        return self.get_parameters({}), len(self.train_set), {"train_loss": total / len(loader)}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        self._set(parameters)
        with torch.no_grad():
            out = self.net(self.x_test)
        loss = float(F.cross_entropy(out, self.y_test))
        return loss, len(self.y_test), {"accuracy": float((out.argmax(1) == self.y_test).float().mean())}


def message_app(make_client: Any, mods: list | None = None) -> ClientApp:
    """The same training as a Message-API ClientApp (Flower >= 1.20 style)."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        client = make_client(ctx)
        params, n, metrics = client.fit(msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
        content = RecordDict({"arrays": ArrayRecord(params), "metrics": MetricRecord({**metrics, "num-examples": n})})
        return Message(content, reply_to=msg)

    return app


# --- set-up -----------------------------------------------------------------------------------


def _scenario(**over: Any) -> Any:
    raw = tiny_raw(rounds=4, clients={"count": 4, "per_round": {"fraction": 1.0}},
                   model={"name": "mlp", "hidden": [16]}, train={"epochs": 2, "batch_size": 16, "lr": 0.1},
                   evaluation={"federated": True}, **over)
    return validate(raw)


def _flower_clients(s: Any) -> dict[str, DigitsClient]:
    """Each Flower client holds its own data (here: fedkit's partition of the scenario)."""
    out = {}
    for name, st in build(s).clients.items():
        assert st.test is not None
        out[name] = DigitsClient(st.train.x.numpy(), st.train.y.numpy(), st.test.x.numpy(), st.test.y.numpy())
    return out


def test_a_numpy_client_trains_through_fedkits_engine(tmp_path: Path) -> None:
    s = _scenario(compression={"uplink": "topk(ratio=0.25)|quant(bits=8)|zstd"})
    plan, init = build_server(s)
    runs = []
    for i in range(2):
        clients = _flower_clients(s)
        link = InProcessLink({name: flower_host(name, c) for name, c in clients.items()})
        runs.append(run_with_link(s, plan, init, link, tmp_path / f"run{i}"))
    a, b = runs
    assert a["rounds"] == 4 and a["skipped_rounds"] == 0
    assert a["final_accuracy"] > 0.5  # chance is 0.1
    assert a["ratio_up"] > 3  # the Flower client's updates went out through fedkit's codec
    assert a["params_sha256"] == b["params_sha256"]  # torch's shuffling is keyed: it reproduces
    rows = [r for r in (tmp_path / "run0" / "metrics.jsonl").read_text().splitlines() if r]
    assert '"fed_acc"' in rows[-1]  # NumPyClient.evaluate answered the evaluate tasks


def test_a_numpy_client_joins_fedkits_grpc_server(tmp_path: Path) -> None:
    s = _scenario(server={"deadline_s": 60})
    clients = _flower_clients(s)
    port_file = tmp_path / "port"
    result: dict[str, Any] = {}

    def server() -> None:
        opts = ServerOptions(listen="127.0.0.1:0", insecure=True, port_file=str(port_file), wait_timeout_s=60)
        result["summary"] = serve(s, tmp_path / "run", opts)

    t = threading.Thread(target=server, daemon=True)
    t.start()
    for _ in range(600):
        if port_file.exists():
            break
        threading.Event().wait(0.05)
    addr = f"127.0.0.1:{port_file.read_text()}"
    stop = threading.Event()
    threads = [
        threading.Thread(target=run_client, args=(addr, flower_host(name, c)),
                         kwargs={"name": name, "insecure": True, "stop": stop}, daemon=True)
        for name, c in clients.items()
    ]
    for th in threads:
        th.start()
    t.join(150)
    stop.set()
    assert "summary" in result, "the server did not finish"
    assert result["summary"]["rounds"] == 4 and result["summary"]["skipped_rounds"] == 0
    assert result["summary"]["final_accuracy"] > 0.5


def test_every_flower_client_form_gives_the_same_update() -> None:
    """NumPyClient, Client, client_fn, legacy ClientApp(client_fn), Message-API ClientApp and
    one with fedkit's uplink mod inside: one task, one update."""
    s = _scenario()
    name, data = next(iter(_flower_clients(s).items()))
    plan, init = build_server(s)
    tasks, _, _ = make_tasks(plan, initial_state(plan, init), 1, "train", [name])
    forms: dict[str, Any] = {
        "numpy": data,
        "client": data.to_client(),
        "client_fn": lambda ctx: data,
        "legacy app": ClientApp(client_fn=lambda ctx: data.to_client()),
        "message app": message_app(lambda ctx: data),
        "message app + uplink_mod": message_app(lambda ctx: data, mods=[uplink_mod("identity")]),
    }
    updates = {}
    for form, client in forms.items():
        reply = flower_host(name, client)(tasks[0])
        assert reply.error is None, (form, reply.error)
        updates[form] = decode(reply.update)
        assert reply.num_examples == len(data.train_set)
    ref = updates.pop("numpy")
    for form, u in updates.items():
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(ref, u, strict=True)), form


def test_a_failing_flower_client_is_a_failed_reply_not_a_crash() -> None:
    class Broken(NumPyClient):
        def fit(self, parameters: Any, config: Any) -> Any:
            raise RuntimeError("out of memory on the device")

    s = _scenario()
    plan, init = build_server(s)
    tasks, _, _ = make_tasks(plan, initial_state(plan, init), 1, "train", ["client-0"])
    reply = flower_host("client-0", Broken())(tasks[0])
    assert reply.update is None and "out of memory on the device" in (reply.error or "")
