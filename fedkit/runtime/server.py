"""The server's round engine (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"), shared by every mode.

How a round flows::

    policy.start ──Send──▶ tasks (downlink codec, typed config) ──▶ link.send
         ▲                                                             │
         │            link.arrivals(until=deadline), completion order  ▼
    policy.on_arrival ◀── accept(task, reply) -> Update | Rejected ◀── Arrival
         │  (policy.on_deadline when the Link's clock reaches the deadline)
         ▼
    Aggregate ──▶ aggregator.step ──▶ new model version
    Close ──▶ evaluate (central, federated) ──▶ RoundRecord (metrics + per-client rows)

Only the Link touches the network, so the same plan and seed give the same parameters
in-process and over gRPC.

A round is one aggregation (one new model version, one metrics row) in every mode. A
synchronous round cancels what is still open when it closes; an asynchronous policy closes with
``Close(keep_open=True)`` and its tasks stay in flight: the engine carries them and the
policy's state to the next round (``ServerState.inflight``), where their arrivals settle
``version - task.version`` versions stale. In-flight tasks are not checkpointed: after a resume
they are gone (the new Link never sent them) and the policy starts afresh, sending new ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from fedkit.compression import make
from fedkit.compression.frame import packed_nbytes
from fedkit.models.train import TrainConfig
from fedkit.runtime import downlink as dl
from fedkit.runtime.accept import Acceptance, Rejected, accept, weighted
from fedkit.runtime.link import Link, gather
from fedkit.runtime.policy import (
    Aggregate,
    Await,
    Close,
    Drop,
    Policy,
    Sampling,
    Send,
    SyncRound,
    View,
)
from fedkit.runtime.task import KINDS, UPDATE_KINDS, EvaluateTask, ModelRef, TrainTask
from fedkit.types import Arrival, ClientId, Encoded, Params, Task, Update

log = logging.getLogger("fedkit.server")

MetricsFn = Callable[[str, Sequence[tuple[int, Mapping[str, float]]]], dict[str, float]]
"""``fn(kind, [(num_examples, metrics), ...]) -> row entries``: how client metrics combine."""


def default_metrics(kind: str, pairs: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Example-weighted means: training loss, and federated loss and accuracy."""
    if kind == "train":
        return {"train_loss": weighted(pairs, "train_loss")}
    return {"fed_loss": weighted(pairs, "loss"), "fed_acc": weighted(pairs, "accuracy")}


class Work(Protocol):
    """Per-client local work: FedProx's partial work for stragglers (fedkit.sim.cost.PartialWork)."""

    def cap(self, rnd: int, client: ClientId, train: TrainConfig, bytes_down: int) -> TrainConfig: ...

    def fraction(self, client: ClientId, asked: TrainConfig, full: TrainConfig) -> float: ...


@dataclass(frozen=True)
class Plan:
    """Everything the server decides, built once from a scenario."""

    seed: int
    rounds: int
    aggregator: Any
    model: ModelRef
    train: Callable[[int], TrainConfig]  # the training settings of each round (lr schedules)
    acceptance: Acceptance
    policy: Policy = field(default_factory=SyncRound)
    sampling: Sampling | None = None
    uplink: str = "identity"
    downlink: str = "identity"
    downlink_mode: str = "full"
    evaluate: Callable[[Params], Mapping[str, float]] | None = None
    eval_every: int = 1
    federated_eval: bool = False
    eval_deadline_s: float | None = None
    metrics: MetricsFn = default_metrics
    max_skipped_rounds: int | None = None  # consecutive rounds without a new model -> RunFailed
    bench_after: int | None = None  # consecutive missed deadlines before a client sits out (Benched)
    split: Any = None  # fedkit.runtime.split.SplitPlan: split learning's seam (None: FL)
    work: Work | None = None  # caps each client's local steps (stragglers: partial)
    secagg: Any = None  # fedkit.runtime.secagg.SecAggPlan: secure aggregation's (None: plain)
    dp: Any = None  # fedkit.runtime.privacy.DpPlan: the clients' DP settings and ε per round
    per_client: dl.PerClient | None = None  # downlinks that differ by client (LoRA ranks, base change)
    models: Mapping[ClientId, ModelRef] = field(default_factory=dict)  # clients building another model

    @property
    def sampler(self) -> Sampling:
        return self.sampling or Sampling(self.seed)


@dataclass(frozen=True)
class InFlight:
    """What an asynchronous round hands the next: its open tasks and the policy's state."""

    open: Mapping[str, Task]
    policy_state: Any


@dataclass(frozen=True)
class ServerState:
    round: int  # rounds completed
    params: Params
    agg_state: Any
    downlink: dl.DownlinkState = field(default_factory=dl.DownlinkState)
    version: int = 0  # aggregations applied: the model version tasks carry
    split: Any = None  # split learning: the server part (fedkit.split.server.ServerState)
    inflight: InFlight | None = None  # not checkpointed (see the module docstring)
    benched: Benched = field(default_factory=lambda: Benched())  # not checkpointed either


@dataclass(frozen=True)
class Benched:
    """Clients that missed their deadline several times in a row (a hung device): they are not
    sampled for a while, so one of them cannot stall every round by the deadline. After
    ``Plan.bench_after`` consecutive misses a client sits out 1 round, then 2, 4, ... (capped at
    64) after each further miss; any answer (even a refused one) clears its record."""

    misses: Mapping[ClientId, int] = field(default_factory=dict)
    until: Mapping[ClientId, int] = field(default_factory=dict)  # sits out rounds < until

    def missed(self, client: ClientId, rnd: int, after: int) -> Benched:
        n = self.misses.get(client, 0) + 1
        until = dict(self.until)
        if n >= after:
            until[client] = rnd + 1 + min(2 ** (n - after), 64)
            log.warning("client %s missed %d deadlines in a row: not sampled before round %d",
                        client, n, until[client])
        return Benched({**self.misses, client: n}, until)

    def answered(self, client: ClientId) -> Benched:
        if client not in self.misses:
            return self
        return Benched({k: v for k, v in self.misses.items() if k != client},
                       {k: v for k, v in self.until.items() if k != client})

    def available(self, clients: Sequence[ClientId], rnd: int) -> tuple[ClientId, ...]:
        if not self.until:
            return tuple(clients)
        return tuple(c for c in clients if self.until.get(c, 0) <= rnd)


@dataclass
class RoundRecord:
    round: int
    status: str = "ok"
    clients_sampled: int = 0
    clients_finished: int = 0
    clients_dropped: int = 0  # tasks that missed the deadline or were lost
    bytes_down: int = 0
    bytes_up: int = 0
    dense_down: int = 0  # what the same messages would cost as uncompressed float32 frames
    dense_up: int = 0
    encode_s: float = 0.0  # downlink encode on the server + uplink encodes on the clients
    decode_s: float = 0.0  # uplink decodes on the server
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    sim_time_s: float = 0.0
    clients: list[dict[str, Any]] = field(default_factory=list)  # one row per settled task

    def row(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "status": self.status,
            **self.metrics,
            "clients_sampled": self.clients_sampled,
            "clients_finished": self.clients_finished,
            "clients_dropped": self.clients_dropped,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "ratio_down": self.dense_down / self.bytes_down if self.bytes_down else None,
            "ratio_up": self.dense_up / self.bytes_up if self.bytes_up else None,
            "encode_s": self.encode_s,
            "decode_s": self.decode_s,
            "wall_s": self.wall_s,
            "sim_time_s": self.sim_time_s,
        }


def dense_nbytes(params: Params) -> int:
    """Size of the uncompressed float32 frame of ``params``: the baseline of every ratio."""
    frame = packed_nbytes(params, itemsize=4)  # counted, not packed: no model copy per round
    return len(Encoded("identity", b"").to_bytes()) + frame


def make_tasks(
    plan: Plan,
    state: ServerState,
    rnd: int,
    kind: str,
    clients: Sequence[ClientId],
    attempt: int = 0,
    train: Mapping[ClientId, Mapping[str, Any]] | None = None,
    repeat: Mapping[ClientId, int] | None = None,
    payloads: Mapping[ClientId, Encoded] | None = None,
) -> tuple[list[Task], dl.DownlinkState, float]:
    """One task per client; training tasks go through the downlink codec (and its mode).
    ``train``: per-client TrainConfig updates; ``repeat``: how many tasks of this kind each
    client already got this round (asynchronous policies), which keys its draws apart;
    ``payloads`` (a protocol stage's messages, made by the policy) replace the model.
    Returns the tasks, the new downlink state and the server's encode seconds."""
    t0 = time.perf_counter()
    train, repeat = train or {}, repeat or {}
    if payloads is not None:  # secure aggregation's later stages: a message, no model
        out = dl.Outgoing(state.downlink, {c: payloads[c] for c in clients}, {})
        stage = KINDS[kind].model_validate({"seed": plan.seed})
        configs: dict[ClientId, Any] = dict.fromkeys(clients, stage)
    elif kind in ("train", "split_train", "secagg_advertise"):
        if plan.per_client is not None:
            each = plan.per_client(state.params, state.agg_state, clients)
            out = dl.prepare_each(plan.downlink_mode, plan.downlink, state.downlink, each, rnd, plan.seed)
        else:
            out = dl.prepare(
                plan.downlink_mode, plan.downlink, state.downlink, state.params, clients, rnd, plan.seed
            )
        base = plan.train(rnd)
        dp = None if plan.dp is None else plan.dp.task(state.agg_state)
        cap = plan.work.cap if plan.work is not None else None

        def config(c: ClientId) -> TrainConfig:
            t = base.model_copy(update=dict(train[c])) if c in train else base
            return t if cap is None else cap(rnd, c, t, out.payloads[c].nbytes)

        configs = {
            c: TrainTask(seed=plan.seed, model=plan.models.get(c, plan.model), train=config(c), uplink=plan.uplink,
                         downlink=out.configs[c], repeat=repeat.get(c, 0), dp=dp)
            for c in clients
        }
        if kind == "split_train":  # the same, plus the split configuration
            configs = {c: plan.split.config(t) for c, t in configs.items()}
        if kind == "secagg_advertise":  # the same, plus how to put the update into the field
            configs = {c: plan.secagg.config(t) for c, t in configs.items()}
    else:  # evaluation sees the server's model exactly, and leaves clients' references alone
        if plan.per_client is not None:
            each = plan.per_client(state.params, state.agg_state, clients)
            out = dl.prepare_each("full", "identity", state.downlink, each, rnd, plan.seed)
        else:
            _, enc = make("identity").encode(None, state.params)
            out = dl.Outgoing(state.downlink, {c: enc for c in clients}, {})
        configs = {c: EvaluateTask(seed=plan.seed, model=plan.models.get(c, plan.model),
                                     device=plan.train(rnd).device) for c in clients}
    tasks = [
        Task(rnd, c, kind, out.payloads[c], configs[c], version=state.version,
             task_id=f"r{rnd}.{attempt}.{kind}.{c}" + (f".{repeat[c]}" if repeat.get(c) else ""))
        for c in clients
    ]
    return tasks, out.state, time.perf_counter() - t0


class _Round:
    """The engine's bookkeeping of one round: open tasks, bytes, per-client rows."""

    def __init__(self, plan: Plan, link: Link, state: ServerState) -> None:
        self.plan, self.link, self.state = plan, link, state
        self.rnd = state.round + 1
        self.rec = RoundRecord(self.rnd)
        carried = state.inflight
        self.open: dict[str, Task] = dict(carried.open) if carried else {}  # in flight, any round
        self.carried: Any = carried.policy_state if carried else None
        self.state = replace(state, inflight=None)
        self.sent: dict[tuple[str, ClientId], int] = {}  # (kind, client) -> tasks sent this round
        self.dense = dense_nbytes(state.params)
        self.accepted: list[Update] = []
        self.closed: str | None = None
        self.work: dict[ClientId, float] = {}  # share of the full local work each client was asked
        self.keep: InFlight | None = None  # set when the policy closes with keep_open
        self.aggregated = False

    def view(self) -> View:
        population = self.state.benched.available(self.link.clients(), self.rnd)
        return View(self.rnd, self.link.now(), population, self.state.version, self.plan.sampler)

    def send(self, a: Send) -> None:
        if a.attempt > 0:
            log.warning(
                "round %d: %d updates accepted, fewer than needed; attempt %d asks %d more clients",
                self.rnd, len(self.accepted), a.attempt, len(a.clients),
            )
        repeat = {c: self.sent.get((a.kind, c), 0) for c in a.clients}
        self.sent |= {(a.kind, c): n + 1 for c, n in repeat.items()}
        tasks, down, enc_s = make_tasks(
            self.plan, self.state, self.rnd, a.kind, a.clients, a.attempt, a.train, repeat, a.payloads
        )
        self.state = replace(self.state, downlink=down)
        rec = self.rec
        rec.encode_s += enc_s
        rec.bytes_down += sum(t.params.nbytes for t in tasks)
        if a.payloads is None:  # tasks that carry the model (not a protocol stage's message)
            rec.clients_sampled += len(tasks)
            rec.dense_down += self.dense * len(tasks)
        self.open |= {t.task_id: t for t in tasks}
        if self.plan.split is not None:
            self.plan.split.opened(tasks)  # before sending: in-process clients stream at once
        if self.plan.work is not None and a.kind == "train":
            full = self.plan.train(self.rnd)
            self.work |= {t.client: self.plan.work.fraction(t.client, t.config.train, full) for t in tasks}
        self.link.send(tasks)

    def settle(self, arrival: Arrival) -> Update | None:
        """Accept or refuse one arrival; record it."""
        task = self.open.pop(arrival.task.task_id)
        r, rec, c = arrival.reply, self.rec, task.client
        row: dict[str, Any] = {"round": self.rnd, "client": c, "kind": task.kind,
                               "time_s": arrival.time, "bytes_down": task.params.nbytes}
        if task.round != self.rnd or task.version != self.state.version:  # sent in an earlier round
            row |= {"sent_round": task.round, "staleness": self.state.version - task.version}
        if r is None or r.error is not None:
            self.state = replace(self.state, downlink=dl.forget(self.state.downlink, c))
        update: Update | None = None
        if c in self.work:
            row["work"] = self.work[c]
        if r is not None:  # it shows life
            self.state = replace(self.state, benched=self.state.benched.answered(c))
        if r is None:
            rec.clients_dropped += 1
            status, reason = "lost", arrival.reason or "no reply"
            log.warning("round %d: client %s: %s", self.rnd, c, reason)
        else:
            if r.update is not None:
                rec.bytes_up += r.update.nbytes
                rec.dense_up += self.dense if task.kind in UPDATE_KINDS else 0
                row["bytes_up"] = r.update.nbytes
            rec.encode_s += float(r.metrics.get("encode_s", 0.0))
            t0 = time.perf_counter()
            try:
                update = arrival.accepted if isinstance(arrival.accepted, Update) else accept(
                    self.plan.acceptance, task, r, self.state.version
                )
                status, reason = "ok", ""
            except Rejected as e:
                status, reason = ("failed" if r.error is not None else "rejected"), str(e)
                what = "failed" if r.error is not None else "rejected update"
                log.warning("round %d: %s from %s: %s", self.rnd, what, c, r.error or e)
            finally:
                rec.decode_s += time.perf_counter() - t0
            row |= {"num_examples": r.num_examples, **r.metrics}
        row |= {"status": status} | ({"reason": reason[:500]} if reason else {})
        rec.clients.append(row)
        if update is not None:
            self.accepted.append(update)
        if self.plan.split is not None:
            self.plan.split.settled(task, keep=update is not None)
        return update

    def miss(self, status: str = "missed", clients: Sequence[ClientId] | None = None) -> None:
        """The deadline passed (or the policy closed the round early: ``cancelled``): every open
        task (or only those of ``clients``) is cancelled and recorded so."""
        which = None if clients is None else set(clients)
        gone = {k: t for k, t in self.open.items() if which is None or t.client in which}
        if not gone:
            return
        self.link.cancel(list(gone))
        for task in gone.values():
            if status == "missed":
                log.warning("round %d: client %s missed the deadline", self.rnd, task.client)
                self.rec.clients_dropped += 1
                if self.plan.bench_after is not None:
                    benched = self.state.benched.missed(task.client, self.rnd, self.plan.bench_after)
                    self.state = replace(self.state, benched=benched)
            self.state = replace(self.state, downlink=dl.forget(self.state.downlink, task.client))
            if self.plan.split is not None:
                self.plan.split.settled(task, keep=False)
            self.rec.clients.append({"round": self.rnd, "client": task.client, "kind": task.kind,
                                     "status": status, "time_s": self.link.now(),
                                     "bytes_down": task.params.nbytes})
        for k in gone:
            del self.open[k]

    def aggregate(self, a: Aggregate) -> None:
        st = self.state
        agg_state, params = self.plan.aggregator.step(st.agg_state, st.params, list(a.updates))
        self.state = replace(st, params=params, agg_state=agg_state, version=st.version + 1)
        self.aggregated = True
        self.rec.clients_finished += len(a.updates) if a.clients is None else a.clients
        pairs = [(u.num_examples, u.metrics) for u in a.updates]
        self.rec.metrics |= self.plan.metrics("train", pairs)
        if self.work and a.updates:
            self.rec.metrics["work_fraction"] = sum(self.work.get(u.client, 1.0) for u in a.updates) / len(a.updates)

    def idle(self) -> None:
        """The round closed without aggregating: a stateful reweight stage still counts it
        (FedAU ticks every client's absence; the Aggregator's contract)."""
        agg = self.plan.aggregator
        if getattr(agg, "reweight", None) is not None:
            st = self.state
            agg_state, _ = agg.step(st.agg_state, st.params, [])
            self.state = replace(st, agg_state=agg_state)


def _run_policy(r: _Round) -> None:
    policy = r.plan.policy
    pstate, actions = policy.start(r.view(), r.carried)
    wait = Await(None)
    while True:
        for a in actions:
            if isinstance(a, Send):
                r.send(a)
            elif isinstance(a, Await):
                wait = a
            elif isinstance(a, Aggregate):
                r.aggregate(a)
            elif isinstance(a, Drop):
                r.miss("missed", a.clients)
            elif isinstance(a, Close):
                if a.keep_open:
                    r.keep = InFlight(dict(r.open), pstate)
                else:
                    r.miss("cancelled")
                r.closed = a.status
                r.rec.metrics |= dict(a.metrics)
                return
        actions = []
        for arrival in r.link.arrivals(wait.deadline):
            if arrival.task.task_id not in r.open:
                continue  # cancelled by the engine (e.g. a previous round's deadline)
            update = r.settle(arrival)
            pstate, actions = policy.on_arrival(r.view(), pstate, arrival, update)
            if actions:
                break
        else:  # deadline reached (or nothing left that can arrive)
            if wait.cancel:
                r.miss()
            pstate, actions = policy.on_deadline(r.view(), pstate)
            if not actions:
                raise RuntimeError(f"round {r.rnd}: policy gave no action at its deadline")


def run_round(
    plan: Plan, link: Link, state: ServerState, wire_from: tuple[int, int] | None = None
) -> tuple[ServerState, RoundRecord]:
    """One round. Its wire bytes count from ``wire_from`` (the link's reading when the previous
    round ended; None: from now), so joins before round 1 and heartbeats between rounds count."""
    t0 = time.perf_counter()
    wire0 = wire_from if wire_from is not None else link.wire_bytes()
    r = _Round(plan, link, state)
    if plan.split is not None:
        plan.split.begin(state.split, r.rnd)
    _run_policy(r)
    if not r.aggregated:
        r.idle()
    rec = r.rec
    if r.closed != "ok":
        rec.status = r.closed or "skipped"
        log.warning("round %d %s", r.rnd, rec.status)
    new = replace(r.state, round=r.rnd, inflight=r.keep)
    if plan.dp is not None:  # ε so far (every round counts, aggregated or not) and what it used
        rec.metrics |= plan.dp.metrics(new.round, new.agg_state)
    if plan.split is not None:  # the server part after this round, and its bytes by category
        split_state, split_metrics = plan.split.end()
        new = replace(new, split=split_state)
        rec.metrics |= split_metrics
    if r.rnd % plan.eval_every == 0 or r.rnd == plan.rounds:
        rec.metrics |= _evaluate(plan, link, new, rec)
    wire1 = link.wire_bytes()
    if wire0 is not None and wire1 is not None:  # the whole exchange as a TCP proxy sees it
        down, up = wire1[0] - wire0[0], wire1[1] - wire0[1]
        rec.metrics |= {"wire_bytes_down": down, "wire_bytes_up": up}
        rec.metrics |= {"wire_ratio_down": rec.dense_down / down} if down and rec.dense_down else {}
        rec.metrics |= {"wire_ratio_up": rec.dense_up / up} if up and rec.dense_up else {}
    rec.wall_s = time.perf_counter() - t0
    rec.sim_time_s = link.now()
    return new, rec


def _evaluate(plan: Plan, link: Link, state: ServerState, rec: RoundRecord) -> dict[str, float]:
    out: dict[str, float] = {}
    evaluate = plan.evaluate if plan.split is None else plan.split.evaluator(state.split)
    if evaluate is not None:
        own = state.params if plan.per_client is None else (
            plan.per_client(state.params, state.agg_state, [dl.SERVER])[dl.SERVER])
        m = evaluate(own if plan.split is None else state.params)
        out |= {"test_loss": float(m["loss"]), "test_acc": float(m["accuracy"])}
        out |= {f"test_{k}": float(v) for k, v in m.items() if k not in ("loss", "accuracy")}
    if plan.federated_eval:
        population = state.benched.available(link.clients(), state.round)
        view = View(state.round, link.now(), population, state.version, plan.sampler)
        sampled = view.sample(attempt=1000)
        tasks, _, _ = make_tasks(plan, state, state.round, "evaluate", sampled)
        rec.bytes_down += sum(t.params.nbytes for t in tasks)
        deadline = None if plan.eval_deadline_s is None else link.now() + plan.eval_deadline_s
        pairs = []
        for a in gather(link, tasks, deadline):
            if a.reply is None:
                continue
            try:
                u = a.accepted if isinstance(a.accepted, Update) else accept(plan.acceptance, a.task, a.reply)
            except Rejected as e:
                log.warning("round %d: evaluation from %s refused: %s", state.round, a.task.client, e)
                continue
            if u.num_examples > 0:
                pairs.append((u.num_examples, u.metrics))
        out |= plan.metrics("evaluate", pairs)
    return out


def run(
    plan: Plan,
    link: Link,
    state: ServerState,
    on_round: Callable[[ServerState, RoundRecord], None] | None = None,
) -> ServerState:
    """Run rounds ``state.round + 1 .. plan.rounds``; ``on_round`` records and checkpoints.

    Raises :class:`RunFailed` (after recording the round) when ``plan.max_skipped_rounds``
    rounds in a row end without a new model, or when no round of the run produced one: a run
    whose every update was refused must not look like a success. Tasks still in flight when
    the run ends (asynchronous policies) are cancelled.
    """
    skipped, any_ok, first = 0, False, state.round + 1
    mark: tuple[int, int] | None = (0, 0)  # round one also carries the cost of connecting
    try:
        while state.round < plan.rounds:
            state, rec = run_round(plan, link, state, mark)
            mark = link.wire_bytes()
            if on_round is not None:
                on_round(state, rec)
            ok = rec.status == "ok"
            any_ok |= ok
            skipped = 0 if ok else skipped + 1
            if plan.max_skipped_rounds is not None and skipped >= plan.max_skipped_rounds:
                raise RunFailed(
                    f"{skipped} consecutive rounds ended without a new model (last: round {rec.round}, "
                    f"{rec.status}); see clients.jsonl for each client's reason (server.max_skipped_rounds)"
                )
    finally:
        if state.inflight is not None:
            link.cancel(list(state.inflight.open))
            state = replace(state, inflight=None)
    if not any_ok and state.round >= first:
        raise RunFailed(f"no round of {first}..{state.round} produced a new model; see clients.jsonl")
    return state


class RunFailed(RuntimeError):
    """The run cannot make progress; what is committed (checkpoints, logs) stays."""
