"""fedkit scenarios on Flower's simulation engine: ``fedkit run SCENARIO --engine flower``.

The ``ServerApp`` runs :class:`~fedkit.compat.flower.FedkitStrategy` with the scenario's
aggregator, sampler and per-round training settings, inside Flower's own ``Strategy.start``
loop; the ``ClientApp`` runs on Flower's Ray-backed simulation runtime, one Flower node per
scenario client. Each worker process builds the scenario's data partition once, from the seed
(nothing is shipped), and a node trains with fedkit's own client runtime
(:func:`fedkit.runtime.client.run_task`: ``sgd_train`` with batches keyed by (seed, round,
client), the uplink codec's frame as the reply). So the two engines see the same data, sample
the same clients, train the same way and aggregate alike: they differ in who moves the
messages, which is what the comparison measures.

The run directory has fedkit's files (``metrics.jsonl``, ``clients.jsonl``, ``summary.json``,
``params.npz``, ``model.json``) with ``wire_bytes_*`` the Flower messages as serialized; there
is no checkpoint (Flower's loop cannot resume). Not supported on this engine, each refused by
name: a downlink codec other than ``identity`` (Flower sends the model as its own arrays),
``downlink_mode: delta``, ``on_too_few: retry``, asynchronous strategies, ``participation:``,
``privacy:`` (secure aggregation, DP) and update attacks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

import fedkit
from fedkit.compat.flower.records import (
    frame_to_record,
    load_codec_state,
    params_to_record,
    record_to_params,
    save_codec_state,
)
from fedkit.compat.flower.strategy import NUM_EXAMPLES, FedkitStrategy, RoundLog, wait_for_nodes
from fedkit.compression import make
from fedkit.report import plots
from fedkit.report.run_dir import RunDir, check_can_start, summarize
from fedkit.runtime.async_policy import is_async
from fedkit.runtime.client import ClientState, ModelCache, run_task
from fedkit.runtime.server import Plan, RunFailed, dense_nbytes
from fedkit.runtime.task import TrainTask
from fedkit.scenario import Scenario, ScenarioError, dump, validate
from fedkit.scenario.build import build_clients, build_server, client_names
from fedkit.types import ClientId, Params, Task

TASK_KEY = "fedkit.task"
"""ConfigRecord entry carrying the round's typed task config (JSON) to the ClientApp."""

RoundCallback = Callable[[Mapping[str, Any]], None]


def unsupported(s: Scenario) -> list[tuple[str, str]]:
    """``(field, why)`` for what in ``s`` this engine cannot run as fedkit does."""
    out = []
    if make(s.compression.downlink).spec != "identity":
        out.append(("compression.downlink", f"{s.compression.downlink!r}: only identity (Flower sends the model as its own arrays)"))
    if s.compression.downlink_mode != "full":
        out.append(("compression.downlink_mode", "only full"))
    if s.server.on_too_few == "retry":
        out.append(("server.on_too_few", "only skip (Flower's round loop has no retry)"))
    if is_async(str(s.strategy["name"])):
        out.append(("strategy", f"{s.strategy['name']!r} is asynchronous; Flower's round loop is synchronous"))
    if s.participation is not None:
        out.append(("participation", "simulated by fedkit's in-process link only"))
    if s.privacy.secagg is not None:
        out.append(("privacy.secagg", "runs as fedkit's multi-exchange round only"))
    if s.privacy.dp is not None:
        out.append(("privacy.dp", "the clip mod, noise step and accountant run on fedkit's engine only"))
    attacks = [a.kind for a in s.attacks if a.kind != "label_flip"]
    if attacks:
        out.append(("attacks", f"{', '.join(attacks)}: simulated by fedkit's in-process link only"))
    return out


# --- the client side, in each simulation worker ----------------------------------------------


@dataclass(frozen=True)
class _World:
    names: list[ClientId]
    clients: dict[ClientId, ClientState]
    models: ModelCache


@functools.lru_cache(maxsize=2)
def _world(scenario_text: str) -> _World:
    """The scenario's clients, built once per worker process from the seed."""
    torch.set_num_threads(1)  # the kernels fedkit's engine uses: the same float results
    s = validate(yaml.safe_load(scenario_text), "<scenario from the ServerApp>")
    return _World(client_names(s.clients.count), build_clients(s), ModelCache())


def _serve(scenario_text: str, kind: str, msg: Message, ctx: Context) -> Message:
    world = _world(scenario_text)
    name = world.names[int(ctx.node_config["partition-id"])]  # type: ignore[arg-type]
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    cfg = json.loads(str(config[TASK_KEY]))
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    params = record_to_params(arrays)
    rnd = int(config["server-round"])  # type: ignore[arg-type]
    spec = make(cfg.get("uplink", "identity")).spec
    memory = load_codec_state(ctx.state, spec) if kind == "train" else None
    state = world.clients[name]
    if memory is not None:  # the codec memory Flower carried from this node's last round
        state = replace(state, codec={spec: memory})
    task = Task(rnd, name, kind, make("identity").encode(None, params)[1], cfg,
                task_id=msg.metadata.message_id, version=rnd - 1)
    state, reply = run_task(state, task, world.models)
    if reply.error is not None:
        raise RuntimeError(reply.error)
    for codec_spec, mem in state.codec.items():
        if mem is not None:
            save_codec_state(ctx.state, codec_spec, mem)
    metrics = {k: float(v) for k, v in reply.metrics.items()} | {NUM_EXAMPLES: reply.num_examples}
    content = RecordDict({"metrics": MetricRecord(metrics)})  # type: ignore[arg-type]
    if reply.update is not None:
        content["arrays"] = frame_to_record(reply.update)
    return Message(content, reply_to=msg)


def client_app(scenario_text: str) -> ClientApp:
    """The ClientApp every simulated node runs for this scenario (see the module docstring)."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, ctx: Context) -> Message:  # which scenario client is this node?
        _world(scenario_text)  # each worker builds the data now, before round 1
        pid = int(ctx.node_config["partition-id"])  # type: ignore[arg-type]
        return Message(RecordDict({"fedkit": ConfigRecord({"partition-id": pid})}), reply_to=msg)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        return _serve(scenario_text, "train", msg, ctx)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        return _serve(scenario_text, "evaluate", msg, ctx)

    return app


# --- the server side --------------------------------------------------------------------------


def _node_names(grid: Grid, names: list[ClientId], wait_s: float) -> dict[int, ClientId]:
    """Flower numbers nodes at random: ask each one which scenario client it is."""
    ids = wait_for_nodes(grid, len(names), wait_s)
    msgs = [Message(RecordDict(), dst_node_id=i, message_type=MessageType.QUERY) for i in ids]
    out: dict[int, ClientId] = {}
    for r in grid.send_and_receive(msgs, timeout=wait_s):
        if r.has_error():
            raise RuntimeError(f"Flower node {r.metadata.src_node_id} failed to start: {r.error.reason}")
        out[r.metadata.src_node_id] = names[int(r.content.config_records["fedkit"]["partition-id"])]  # type: ignore[arg-type]
    if len(out) != len(names):
        raise RuntimeError(f"only {len(out)} of {len(names)} Flower nodes answered within {wait_s:g} s")
    return out


def _row(plan: Plan, rlog: RoundLog, central: Mapping[str, float], dense: int, t_start: float,
         t_round: float) -> dict[str, Any]:
    ok = rlog.clients_finished > 0
    oks = [c for c in rlog.clients if c.get("status") == "ok"]
    return {
        "round": rlog.round,
        "status": "ok" if ok else f"skipped: {rlog.clients_finished} replies",
        **rlog.metrics,
        **central,
        "clients_sampled": rlog.clients_sampled,
        "clients_finished": rlog.clients_finished,
        "bytes_down": rlog.bytes_down,
        "bytes_up": rlog.bytes_up,
        "ratio_down": dense * rlog.clients_sampled / rlog.bytes_down if rlog.bytes_down else None,
        "ratio_up": dense * len(oks) / rlog.bytes_up if rlog.bytes_up else None,
        "wire_bytes_down": rlog.wire_bytes_down,
        "wire_bytes_up": rlog.wire_bytes_up,
        "encode_s": sum(float(c.get("encode_s", 0.0)) for c in oks),
        "decode_s": rlog.decode_s,
        "wall_s": time.perf_counter() - t_round,
        "sim_time_s": time.perf_counter() - t_start,
    }


def _server_app(scenario: Scenario, plan: Plan, init_params: Params, rd: RunDir,
                on_round: RoundCallback | None, wait_s: float, result: dict[str, Any]) -> ServerApp:
    app = ServerApp()
    names = client_names(scenario.clients.count)

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(1)
        t_start = time.perf_counter()

        def round_config(rnd: int) -> dict[str, Any]:
            task = TrainTask(seed=plan.seed, model=plan.model, train=plan.train(rnd), uplink=plan.uplink)
            return {TASK_KEY: task.model_dump_json()}

        def evaluate_round(rnd: int) -> bool:
            return plan.federated_eval and (rnd % plan.eval_every == 0 or rnd == plan.rounds)

        eval_config = json.dumps({"seed": plan.seed, "model": plan.model.model_dump(mode="json")})
        strategy = FedkitStrategy(
            plan.aggregator, sampling=plan.sampler, names=_node_names(grid, names, wait_s),
            round_config=round_config, evaluate_round=evaluate_round, metrics_fn=plan.metrics,
            wait_s=wait_s, count_wire_bytes=True,
        )
        dense = dense_nbytes(init_params)
        starts: dict[int, float] = {}

        def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
            if rnd == 0:
                starts[1] = time.perf_counter()
                return None
            params = record_to_params(arrays)
            central: dict[str, float] = {}
            if plan.evaluate is not None and (rnd % plan.eval_every == 0 or rnd == plan.rounds):
                m = plan.evaluate(params)
                central = {"test_loss": float(m["loss"]), "test_acc": float(m["accuracy"])}
                central |= {f"test_{k}": float(v) for k, v in m.items() if k not in ("loss", "accuracy")}
            rlog = strategy.rounds[-1]
            row = _row(plan, rlog, central, dense, t_start, starts.get(rnd, t_start))
            rd.append_rows(row, rlog.clients)
            if on_round is not None:
                on_round(row)
            result["params"] = params
            starts[rnd + 1] = time.perf_counter()
            return MetricRecord(central) if central else None  # type: ignore[arg-type]

        strategy.start(
            grid, params_to_record(init_params), num_rounds=plan.rounds,
            timeout=scenario.server.deadline_s or 7 * 24 * 3600.0,
            train_config=ConfigRecord(), evaluate_config=ConfigRecord({TASK_KEY: eval_config}),
            evaluate_fn=evaluate_fn,
        )
        result.setdefault("params", init_params)

    return app


@contextlib.contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    """Flower logs every round at INFO (and that ``run_simulation`` is deprecated); fedkit
    reports progress itself."""
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _importable_in_workers() -> None:
    """Ray workers get the driver's ``sys.path``: make sure it names this fedkit and the
    current directory (user model/strategy modules resolve there, as in fedkit's engine)."""
    root = str(Path(fedkit.__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def run_flower(
    scenario: Scenario,
    out: str | Path,
    on_round: RoundCallback | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    verbose: bool = False,
    wait_s: float = 600.0,
) -> dict[str, Any]:
    """Run ``scenario`` on Flower's simulation engine with ``workers`` Ray workers (one CPU
    each; default: every CPU) and leave a run directory at ``out``; returns the summary."""
    problems = unsupported(scenario)
    if problems:
        raise ScenarioError("--engine flower", problems)
    text = dump(scenario)
    check_can_start(out, False, overwrite, text)
    torch.set_num_threads(1)
    plan, init_params = build_server(scenario)
    rd = RunDir(out, overwrite=overwrite)
    rd.write_scenario(text)
    rd.write_json("model.json", plan.model.model_dump(mode="json"))
    result: dict[str, Any] = {}
    n_workers = workers or os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": n_workers, "num_gpus": 0, "include_dashboard": False},
    }
    _importable_in_workers()
    with _quiet_flower(verbose), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")  # CUDA env tip
        run_simulation(
            _server_app(scenario, plan, init_params, rd, on_round, wait_s, result),
            client_app(text), num_supernodes=scenario.clients.count, backend_config=backend,  # type: ignore[arg-type]
        )
    rows = rd.metrics()
    if len(rows) < scenario.rounds:
        raise RunFailed(f"the Flower run ended after {len(rows)} of {scenario.rounds} rounds")
    if not any(r.get("status") == "ok" for r in rows):
        raise RunFailed("no round of the Flower run produced a new model; see clients.jsonl")
    params = result["params"]
    summary = summarize(rows, params, scenario.seed, scenario.name) | {"engine": "flower"}
    rd.write_final(params, summary)
    if scenario.output.plot:
        plots.curves(rows, rd.path / "curves.png", title=f"{scenario.name} (flower)")
    return summary
