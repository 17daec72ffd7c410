"""Flower client code as a fedkit client.

:func:`flower_handlers` gives fedkit's task handlers (``train``, ``evaluate``) for a Flower
``NumPyClient``, ``Client``, ``client_fn(context)`` or ``ClientApp``; :func:`flower_host` puts
them in a :class:`~fedkit.runtime.client.ClientHost`, which every fedkit Link runs: the
in-process simulation, or :func:`fedkit.transport.client.run_client` against a fedkit server
over gRPC. The Flower code is unchanged: it gets the global model as NumPy arrays and a config
dict and returns its local model, example count and metrics, as under Flower. fedkit turns that
into its update (``local - global``), which the host's uplink mod encodes with the task's codec,
exactly as for fedkit's own clients; a ``ClientApp`` that already sends fedkit frames
(:func:`~fedkit.compat.flower.uplink_mod`) has them decoded first.

The config a Flower client sees: ``server-round`` and the task's training settings (``lr``,
``epochs``, ``batch_size``, ``steps``, ``momentum``, ``weight_decay``, ``mu``, ``optimizer``), so
a ``fit`` that reads ``config["lr"]`` follows the scenario's schedule; ``config_fn(task, config)``
replaces that mapping. torch's global generator is keyed by (seed, round, client) around each
call, as for fedkit's own training, so a Flower client that shuffles with torch reproduces.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from flwr.app import (
    DEFAULT_TTL,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    RecordDict,
)
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    evaluateins_to_recorddict,
    fitins_to_recorddict,
    recorddict_to_evaluateres,
    recorddict_to_fitres,
)

from fedkit.compat.flower.mods import local_delta, reply_delta
from fedkit.compat.flower.strategy import NUM_EXAMPLES, reply_metrics
from fedkit.models import LocalData, keyed_torch
from fedkit.runtime import task as tasks
from fedkit.runtime.client import ClientFn, ClientHost, ClientState
from fedkit.runtime.client import Context as TaskContext
from fedkit.runtime.downlink import receive
from fedkit.types import ClientId, Params, Reply, Task

FlowerClient = NumPyClient | Client | ClientApp | Callable[[Context], NumPyClient | Client]
"""What :func:`flower_handlers` accepts."""

ConfigFn = Callable[[Task, Any], Mapping[str, Any]]

_SETTINGS = ("lr", "epochs", "batch_size", "steps", "momentum", "weight_decay", "mu", "optimizer")


def default_config(task: Task, config: Any) -> dict[str, Any]:
    """``server-round`` and, for training, the task's settings (see the module docstring)."""
    out: dict[str, Any] = {"server-round": task.round}
    if isinstance(config, tasks.TrainTask):
        train = config.train.model_dump()
        out |= {k: train[k] for k in _SETTINGS if train.get(k) is not None}
    return out


def node_id_of(name: ClientId) -> int:
    """A stable Flower node id for a fedkit client name (63 bits of its sha256)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class FitOut:
    delta: Params
    num_examples: int
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class EvalOut:
    loss: float | None
    num_examples: int
    metrics: Mapping[str, Any]


class _Caller:
    """Calls one Flower client of any of the accepted kinds, as Flower itself would."""

    def __init__(self, client: FlowerClient, context: Context) -> None:
        self.client = client
        self.context = context

    def _object(self) -> Client:
        c = self.client
        if isinstance(c, NumPyClient | Client):
            obj: Any = c
        elif isinstance(c, ClientApp):
            raise TypeError("a ClientApp is called with messages")
        elif callable(c):  # Flower calls client_fn(context) for every message
            obj = c(self.context)
        else:
            raise TypeError(f"not a Flower client: {type(c).__name__}")
        if isinstance(obj, NumPyClient):
            return obj.to_client()
        if not isinstance(obj, Client):
            raise TypeError(f"client_fn returned {type(obj).__name__}, not a Flower Client or NumPyClient")
        return obj

    def _message(self, content: RecordDict, kind: str, task: Task) -> Message:
        md = Metadata(
            run_id=0, message_id=task.task_id or uuid.uuid4().hex, src_node_id=1,
            dst_node_id=self.context.node_id, reply_to_message_id="", group_id=str(task.round),
            created_at=time.time(), ttl=DEFAULT_TTL, message_type=kind,
        )
        # Outside a Flower runtime nobody sets TaskIdentity, so the message gets its metadata
        # whole (flwr 1.42's constructor for messages that already have one).
        return Message(content, metadata=md)  # type: ignore[call-overload]

    def _app(self, content: RecordDict, kind: str, task: Task) -> RecordDict:
        assert isinstance(self.client, ClientApp)
        reply = self.client(self._message(content, kind, task), self.context)
        if reply.has_error():
            raise RuntimeError(f"ClientApp failed: {reply.error.reason}")
        return reply.content

    def _legacy_app(self) -> bool:
        # A ClientApp built from client_fn speaks the FitIns/FitRes records; flwr 1.42 keeps
        # that wrapped function in ``_call`` (decorator-based apps leave it None).
        return isinstance(self.client, ClientApp) and getattr(self.client, "_call", None) is not None

    def fit(self, params: Params, config: dict[str, Any], task: Task) -> FitOut:
        if isinstance(self.client, ClientApp) and not self._legacy_app():
            content = RecordDict({"arrays": ArrayRecord(params), "config": ConfigRecord(config)})
            reply = self._app(content, MessageType.TRAIN, task)
            n, metrics = reply_metrics(reply, NUM_EXAMPLES)
            return FitOut(reply_delta(reply, params), n, metrics)
        ins = FitIns(ndarrays_to_parameters(params), config)
        if self._legacy_app():
            res = recorddict_to_fitres(
                self._app(fitins_to_recorddict(ins, keep_input=True), MessageType.TRAIN, task), keep_input=False
            )
        else:
            res = self._object().fit(ins)
        delta = local_delta(parameters_to_ndarrays(res.parameters), params, what="Flower client's fit")
        return FitOut(delta, int(res.num_examples), dict(res.metrics))

    def evaluate(self, params: Params, config: dict[str, Any], task: Task) -> EvalOut:
        if isinstance(self.client, ClientApp) and not self._legacy_app():
            content = RecordDict({"arrays": ArrayRecord(params), "config": ConfigRecord(config)})
            n, metrics = reply_metrics(self._app(content, MessageType.EVALUATE, task), NUM_EXAMPLES)
            return EvalOut(None, n, metrics)
        ins = EvaluateIns(ndarrays_to_parameters(params), config)
        if self._legacy_app():
            res = recorddict_to_evaluateres(
                self._app(evaluateins_to_recorddict(ins, keep_input=True), MessageType.EVALUATE, task)
            )
        else:
            res = self._object().evaluate(ins)
        return EvalOut(float(res.loss), int(res.num_examples), dict(res.metrics))


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items()
        if isinstance(v, int | float | np.number) and not isinstance(v, bool) and np.isfinite(v)
    }


def flower_handlers(
    client: FlowerClient,
    *,
    node_id: int = 0,
    node_config: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    config_fn: ConfigFn = default_config,
) -> dict[str, ClientFn]:
    """fedkit handlers (``train``, ``evaluate``) that run ``client``; see the module docstring.

    ``node_id``, ``node_config`` (e.g. ``{"partition-id": 3, "num-partitions": 10}``) and
    ``run_config`` fill the Flower ``Context`` the client gets; its ``state`` persists from one
    task to the next, as Flower keeps it per node.
    """
    context = Context(
        run_id=0, node_id=node_id, node_config=dict(node_config or {}), state=RecordDict(),
        run_config=dict(run_config or {}),
    )
    call = _Caller(client, context)

    def start(state: ClientState, task: Task, ctx: TaskContext) -> tuple[ClientState, Params]:
        params, held = receive(ctx.config.downlink, task.params, state.held)
        return replace(state, held=held), params

    def train(state: ClientState, task: Task, ctx: TaskContext) -> tuple[ClientState, Reply]:
        t0 = time.perf_counter()
        state, params = start(state, task, ctx)
        with keyed_torch(ctx.seed_int("torch-train")):
            out = call.fit(params, dict(config_fn(task, ctx.config)), task)
        metrics = _numbers(out.metrics) | {"compute_s": time.perf_counter() - t0}
        return state, Reply(task.task_id, state.id, task.round, out.num_examples, metrics=metrics,
                            version=task.version, delta=out.delta)

    def evaluate(state: ClientState, task: Task, ctx: TaskContext) -> tuple[ClientState, Reply]:
        state, params = start(state, task, ctx)
        with keyed_torch(ctx.seed_int("torch-eval")):
            out = call.evaluate(params, dict(config_fn(task, ctx.config)), task)
        metrics = _numbers(out.metrics) | ({} if out.loss is None else {"loss": out.loss})
        return state, Reply(task.task_id, state.id, task.round, out.num_examples, metrics=metrics,
                            version=task.version)

    return {"train": train, "evaluate": evaluate}


def flower_host(name: ClientId, client: FlowerClient, **kwargs: Any) -> ClientHost:
    """A fedkit client named ``name`` that runs a Flower client (``kwargs``: see
    :func:`flower_handlers`; ``node_id`` defaults to :func:`node_id_of` the name). The Flower
    client holds its own data; the host's fedkit state holds none."""
    kwargs.setdefault("node_id", node_id_of(name))
    empty = LocalData(torch.zeros((0,)), torch.zeros((0,), dtype=torch.int64))
    return ClientHost(ClientState(name, empty), handlers=flower_handlers(client, **kwargs))
