"""fedkit aggregators as Flower strategies.

Any fedkit aggregator -- ``make_aggregator("fedadam", lr=0.05)``, ``make_aggregator("krum", f=1)``,
a user's own ``init``/``step`` value -- runs as a Flower ``Strategy`` in a ``ServerApp``: for
each train reply fedkit takes the update (``local - global``, or the decoded fedkit frame an
:func:`~fedkit.compat.flower.uplink_mod` sent) and applies one ``aggregator.step``, the same
call its own engine makes; Flower only moves the messages::

    strategy = FedkitStrategy(make_aggregator("multikrum", f=1), sampling=Sampling(seed=0, count=10))
    result = strategy.start(grid, ArrayRecord(initial_ndarrays), num_rounds=20)

Sampling is fedkit's (:func:`fedkit.runtime.policy.sample_clients`): seeded by (seed, round) over
the nodes' client names, so a rerun asks the same clients, and with ``names`` mapping node ids to
fedkit client names it asks exactly whom fedkit's engine would. Updates are aggregated in client
name order, whatever order they arrive in. The aggregator's state (server-optimizer moments) is
a value, replaced every round (``strategy.state``); each round's bookkeeping is appended to
``strategy.rounds``.

:class:`FedkitLegacyStrategy` is the same adapter for the older ``flwr.server.strategy``
interface (``ServerApp(server_fn=...)``, ``start_grid``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedkit.compat.flower.mods import local_delta, reply_delta
from fedkit.compat.flower.records import (
    message_nbytes,
    only_array_record,
    params_to_record,
    record_frame,
    record_to_params,
)
from fedkit.runtime.policy import Sampling, sample_clients
from fedkit.runtime.server import MetricsFn, default_metrics
from fedkit.types import ClientId, DecodeError, Params, Update

log = logging.getLogger("fedkit.compat.flower")

NUM_EXAMPLES = "num-examples"
"""The MetricRecord key Flower's strategies weight by (``weighted_by_key``)."""


@dataclass(frozen=True)
class AdapterState:
    """What the adapter carries between rounds: the global model it sent and the aggregator's
    state (None before the first round)."""

    params: Params | None = None
    keys: tuple[str, ...] = ()
    agg: Any = None


@dataclass
class RoundLog:
    """One round as the server saw it, in fedkit's vocabulary (``clients.jsonl`` rows included).
    ``bytes_*`` are payloads (arrays or fedkit frames); ``wire_bytes_*`` whole Flower messages."""

    round: int
    clients_sampled: int = 0
    clients_finished: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    wire_bytes_down: int = 0
    wire_bytes_up: int = 0
    decode_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    clients: list[dict[str, Any]] = field(default_factory=list)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def reply_metrics(content: RecordDict, weighted_by_key: str = NUM_EXAMPLES) -> tuple[int, dict[str, float]]:
    """``(num_examples, other metrics)`` of a reply's MetricRecord (Flower's convention: one
    record holding the weight key)."""
    for record in content.metric_records.values():
        if weighted_by_key in record:
            n = record[weighted_by_key]
            if isinstance(n, list) or not float(n) >= 0:
                raise ValueError(f"{weighted_by_key} must be one number >= 0, got {n!r}")
            rest = {k: v for k, v in record.items() if k != weighted_by_key}
            return int(n), _finite(rest)
    raise ValueError(f"reply has no MetricRecord with {weighted_by_key!r}")


def wait_for_nodes(grid: Grid, need: int, wait_s: float) -> list[int]:
    """Node ids once at least ``need`` nodes are connected (Flower has no event for it: poll)."""
    end = time.monotonic() + wait_s
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= need:
            return ids
        if time.monotonic() > end:
            raise TimeoutError(f"only {len(ids)} of {need} Flower nodes connected after {wait_s:g} s")
        time.sleep(0.02)


class _Core:
    """The adapter's logic shared by both Flower interfaces: sampling, updates, one step."""

    def __init__(self, aggregator: Any, sampling: Sampling | None, metrics_fn: MetricsFn) -> None:
        self.aggregator = aggregator
        self.sampling = sampling or Sampling(seed=0)
        self.metrics_fn = metrics_fn
        self.state = AdapterState()

    def begin(self, params: Params, keys: Sequence[str]) -> None:
        agg = self.state.agg if self.state.agg is not None else self.aggregator.init(params)
        self.state = AdapterState(params, tuple(keys), agg)

    def sample(self, population: Sequence[ClientId], rnd: int, attempt: int = 0) -> list[ClientId]:
        return sample_clients(self.sampling, population, rnd, attempt)

    def step(self, updates: list[Update]) -> tuple[Params | None, dict[str, float]]:
        st = self.state
        assert st.params is not None, "configure before aggregate"
        if not updates and getattr(self.aggregator, "reweight", None) is None:
            return None, {}
        updates = sorted(updates, key=lambda u: u.client)
        agg, params = self.aggregator.step(st.agg, st.params, updates)
        self.state = replace(st, params=params, agg=agg)
        metrics = self.metrics_fn("train", [(u.num_examples, u.metrics) for u in updates]) if updates else {}
        return params, _finite(metrics)


class FedkitStrategy(Strategy):
    """A fedkit aggregator as a Flower (Message API) strategy; see the module docstring.

    ``names`` maps node ids to fedkit client names (default: the node id as a string) and
    fixes the population: the strategy waits until those nodes (else ``min_nodes``) are
    connected. ``round_config(round)`` adds entries to each round's train ConfigRecord (a
    learning-rate schedule, fedkit's typed task config). ``evaluate_round(round)`` says after
    which rounds sampled clients evaluate the model (default: never), sampled as fedkit's engine
    does. ``count_wire_bytes`` measures every message as Flower serializes it (a serialization
    per message).
    """

    def __init__(
        self,
        aggregator: Any,
        *,
        sampling: Sampling | None = None,
        names: Mapping[int, ClientId] | None = None,
        min_nodes: int = 1,
        round_config: Callable[[int], Mapping[str, Any]] | None = None,
        evaluate_round: Callable[[int], bool] | None = None,
        metrics_fn: MetricsFn = default_metrics,
        weighted_by_key: str = NUM_EXAMPLES,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        wait_s: float = 600.0,
        count_wire_bytes: bool = False,
    ) -> None:
        self.core = _Core(aggregator, sampling, metrics_fn)
        self.names = dict(names) if names is not None else None
        self.min_nodes = len(self.names) if self.names is not None else min_nodes
        self.round_config = round_config
        self.evaluate_round = evaluate_round
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.wait_s = wait_s
        self.count_wire_bytes = count_wire_bytes
        self.rounds: list[RoundLog] = []

    @property
    def state(self) -> AdapterState:
        return self.core.state

    def summary(self) -> None:
        log.info("FedkitStrategy: %s, sampling %s", type(self.core.aggregator).__name__, self.core.sampling)

    def _name(self, node_id: int) -> ClientId:
        return self.names.get(node_id, str(node_id)) if self.names is not None else str(node_id)

    def _population(self, grid: Grid) -> dict[ClientId, int]:
        ids = wait_for_nodes(grid, self.min_nodes, self.wait_s)
        if self.names is not None:
            ids = [i for i in ids if i in self.names]
        return {self._name(i): i for i in ids}

    def _messages(self, kind: str, chosen: Sequence[ClientId], nodes: Mapping[ClientId, int],
                  arrays: ArrayRecord, config: ConfigRecord) -> list[Message]:
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        msgs = [Message(record, dst_node_id=nodes[c], message_type=kind) for c in chosen]
        if kind == MessageType.TRAIN:
            rlog = self.rounds[-1]
            rlog.clients_sampled += len(msgs)
            rlog.bytes_down += arrays.count_bytes() * len(msgs)
            if self.count_wire_bytes:
                rlog.wire_bytes_down += sum(message_nbytes(m) for m in msgs)
        return msgs

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.core.begin(record_to_params(arrays), list(arrays.keys()))
        self.rounds.append(RoundLog(server_round))
        nodes = self._population(grid)
        chosen = self.core.sample(sorted(nodes), server_round)
        extra = dict(self.round_config(server_round)) if self.round_config else {}
        config = ConfigRecord(dict(config) | extra | {"server-round": server_round})
        return self._messages(MessageType.TRAIN, chosen, nodes, arrays, config)

    def _update(self, msg: Message, params: Params, rlog: RoundLog) -> Update | None:
        name = self._name(msg.metadata.src_node_id)
        row: dict[str, Any] = {"round": rlog.round, "client": name, "kind": "train"}
        rlog.clients.append(row)
        if self.count_wire_bytes:
            rlog.wire_bytes_up += message_nbytes(msg)
        if msg.has_error():
            row |= {"status": "failed", "reason": str(msg.error.reason)[:500]}
            log.warning("round %d: client %s failed: %s", rlog.round, name, msg.error.reason)
            return None
        try:
            _, record = only_array_record(msg.content, "train reply")
            enc = record_frame(record)
            nbytes = enc.nbytes if enc is not None else record.count_bytes()
            rlog.bytes_up += nbytes
            n, metrics = reply_metrics(msg.content, self.weighted_by_key)
            t0 = time.perf_counter()
            delta = reply_delta(msg.content, params)
            rlog.decode_s += time.perf_counter() - t0
        except (ValueError, DecodeError) as e:
            row |= {"status": "rejected", "reason": str(e)[:500]}
            log.warning("round %d: rejected update from %s: %s", rlog.round, name, e)
            return None
        row |= {"status": "ok", "num_examples": n, "bytes_up": nbytes, **metrics}
        return Update(name, delta, n, metrics)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        params = self.core.state.params
        assert params is not None, "aggregate_train before configure_train"
        rlog = self.rounds[-1]
        updates = [u for m in replies if (u := self._update(m, params, rlog)) is not None]
        new, metrics = self.core.step(updates)
        rlog.clients_finished = len(updates)
        rlog.metrics = metrics
        if new is None:
            return None, None
        return params_to_record(new, self.core.state.keys), MetricRecord(metrics)  # type: ignore[arg-type]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.evaluate_round is None or not self.evaluate_round(server_round):
            return []
        nodes = self._population(grid)
        chosen = self.core.sample(sorted(nodes), server_round, attempt=1000)  # as fedkit's engine
        config = ConfigRecord(dict(config) | {"server-round": server_round})
        return self._messages(MessageType.EVALUATE, chosen, nodes, arrays, config)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        pairs = []
        for msg in replies:
            if msg.has_error():
                continue
            try:
                n, metrics = reply_metrics(msg.content, self.weighted_by_key)
            except ValueError as e:
                log.warning("round %d: evaluation refused: %s", server_round, e)
                continue
            if n > 0:
                pairs.append((n, metrics))
        if not pairs:
            return None
        metrics = _finite(self.core.metrics_fn("evaluate", pairs))
        if self.rounds and self.rounds[-1].round == server_round:
            self.rounds[-1].metrics |= metrics
        return MetricRecord(metrics)  # type: ignore[arg-type]


class FedkitLegacyStrategy(LegacyStrategy):
    """A fedkit aggregator as a ``flwr.server.strategy.Strategy`` (the ``FitIns``/``FitRes``
    interface): same sampling and step as :class:`FedkitStrategy`, client ids are Flower's
    ``ClientProxy.cid``. ``initial_params`` is the model of round 0."""

    def __init__(
        self,
        aggregator: Any,
        initial_params: Params,
        *,
        sampling: Sampling | None = None,
        min_clients: int = 1,
        fit_config: Callable[[int], Mapping[str, Scalar]] | None = None,
        metrics_fn: MetricsFn = default_metrics,
        wait_s: float = 600.0,
    ) -> None:
        self.core = _Core(aggregator, sampling, metrics_fn)
        self.initial = [a.copy() for a in initial_params]
        self.min_clients = min_clients
        self.fit_config = fit_config
        self.wait_s = wait_s

    def __repr__(self) -> str:
        return f"FedkitLegacyStrategy({type(self.core.aggregator).__name__})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.initial)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        params = parameters_to_ndarrays(parameters)
        self.core.begin(params, [str(i) for i in range(len(params))])
        if not client_manager.wait_for(self.min_clients, timeout=int(self.wait_s)):
            raise TimeoutError(f"fewer than {self.min_clients} Flower clients after {self.wait_s:g} s")
        proxies = client_manager.all()
        config = dict(self.fit_config(server_round)) if self.fit_config else {}
        ins = FitIns(parameters, config | {"server-round": server_round})
        return [(proxies[c], ins) for c in self.core.sample(sorted(proxies), server_round)]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        params = self.core.state.params
        assert params is not None, "aggregate_fit before configure_fit"
        updates = []
        for proxy, res in results:
            try:
                delta = local_delta(parameters_to_ndarrays(res.parameters), params)
            except ValueError as e:
                log.warning("round %d: rejected update from %s: %s", server_round, proxy.cid, e)
                continue
            updates.append(Update(proxy.cid, delta, int(res.num_examples), _finite(res.metrics)))
        new, metrics = self.core.step(updates)
        return (None if new is None else ndarrays_to_parameters(new)), dict(metrics)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None
