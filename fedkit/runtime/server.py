"""The server round loop (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"), shared by every mode: sample, send, collect, aggregate.

Only ``link.exchange`` touches the network, so the same plan and seed give the same
parameters in-process and over gRPC.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedkit import rng as frng
from fedkit.compression import decode, make
from fedkit.compression.frame import packed_nbytes
from fedkit.runtime import downlink as dl
from fedkit.runtime.link import Link
from fedkit.types import ClientId, DecodeError, Encoded, Params, Reply, Task, TaskKind, Update

log = logging.getLogger("fedkit.server")


@dataclass(frozen=True)
class Plan:
    """Everything the server decides, built once from a scenario."""

    seed: int
    rounds: int
    aggregator: Any
    client_config: Mapping[str, Any]
    fraction: float | None = 1.0
    count: int | None = None
    min_clients: int = 1
    downlink: str = "identity"
    downlink_mode: str = "full"
    evaluate: Callable[[Params], Mapping[str, float]] | None = None
    eval_every: int = 1
    federated_eval: bool = False
    deadline_s: float | None = None
    min_replies: int = 1
    on_too_few: str = "skip"
    max_retries: int = 2


@dataclass(frozen=True)
class ServerState:
    round: int  # rounds completed
    params: Params
    agg_state: Any
    downlink: dl.DownlinkState = field(default_factory=dl.DownlinkState)


@dataclass
class RoundRecord:
    round: int
    status: str = "ok"
    clients_sampled: int = 0
    clients_finished: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    dense_down: int = 0  # what the same messages would cost as uncompressed float32 frames
    dense_up: int = 0
    encode_s: float = 0.0  # downlink encode on the server + uplink encodes on the clients
    decode_s: float = 0.0  # uplink decodes on the server
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "status": self.status,
            **self.metrics,
            "clients_sampled": self.clients_sampled,
            "clients_finished": self.clients_finished,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "ratio_down": self.dense_down / self.bytes_down if self.bytes_down else None,
            "ratio_up": self.dense_up / self.bytes_up if self.bytes_up else None,
            "encode_s": self.encode_s,
            "decode_s": self.decode_s,
            "wall_s": self.wall_s,
        }


def dense_nbytes(params: Params) -> int:
    """Size of the uncompressed float32 frame of ``params``: the baseline of every ratio."""
    frame = packed_nbytes(params, itemsize=4)  # counted, not packed: no model copy per round
    return len(Encoded("identity", b"").to_bytes()) + frame


def sample_clients(plan: Plan, clients: Sequence[ClientId], rnd: int, attempt: int = 0) -> list[ClientId]:
    """Seeded uniform sampling without replacement, returned in the population's order."""
    pool = sorted(clients)
    n = len(pool)
    k = plan.count if plan.count is not None else round((plan.fraction or 1.0) * n)
    k = min(n, max(plan.min_clients, k, 1))
    gen = frng.rng(plan.seed, "sample", rnd, attempt)
    chosen = np.sort(gen.choice(n, size=k, replace=False))
    return [pool[i] for i in chosen]


def check_update(params: Params, reply: Reply) -> Params:
    """Decode a training reply and check it against the global params; ValueError says why."""
    if reply.update is None:
        raise ValueError("training reply carries no update")
    if reply.num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {reply.num_examples}")
    try:
        delta = decode(reply.update)
    except DecodeError as e:
        raise ValueError(f"malformed update: {e}") from None
    if len(delta) != len(params):
        raise ValueError(f"update has {len(delta)} tensors, the model has {len(params)}")
    for i, (d, p) in enumerate(zip(delta, params, strict=True)):
        if d.shape != p.shape:
            raise ValueError(f"tensor {i}: shape {d.shape}, expected {p.shape}")
        if d.dtype != p.dtype:
            raise ValueError(f"tensor {i}: dtype {d.dtype}, expected {p.dtype}")
        if not np.isfinite(d).all():
            raise ValueError(f"tensor {i}: contains NaN or Inf")
    return delta


def _tasks(
    plan: Plan,
    state: ServerState,
    clients: Sequence[ClientId],
    kind: TaskKind,
    attempt: int,
    rec: RoundRecord,
) -> tuple[dict[ClientId, Task], dl.DownlinkState]:
    """One task per client; training tasks go through the downlink codec (and its mode)."""
    rnd = state.round + 1
    t0 = time.perf_counter()
    if kind == "train":
        out = dl.prepare(
            plan.downlink_mode, plan.downlink, state.downlink, state.params, clients, rnd, plan.seed
        )
    else:  # evaluation sees the server's model exactly, and leaves clients' references alone
        _, enc = make("identity").encode(None, state.params)
        out = dl.Outgoing(state.downlink, {c: enc for c in clients}, {c: {} for c in clients})
    rec.encode_s += time.perf_counter() - t0
    base = {**plan.client_config, "seed": plan.seed}
    tasks = {
        c: Task(
            rnd, c, kind, out.payloads[c], base | {"downlink": out.configs[c]},
            task_id=f"r{rnd}.{attempt}.{kind}.{c}",
        )
        for c in clients
    }
    return tasks, out.state


def _weighted(replies: Sequence[Reply], key: str) -> float:
    pairs = [(r.num_examples, r.metrics[key]) for r in replies if key in r.metrics]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else math.nan


def run_round(plan: Plan, link: Link, state: ServerState) -> tuple[ServerState, RoundRecord]:
    t0 = time.perf_counter()
    rnd = state.round + 1
    rec = RoundRecord(rnd)
    wire0 = link.wire_bytes()
    dense = dense_nbytes(state.params)
    updates: list[Update] = []
    ok: list[Reply] = []
    for attempt in range(plan.max_retries + 1 if plan.on_too_few == "retry" else 1):
        sampled = sample_clients(plan, link.clients(), rnd, attempt)
        tasks, down = _tasks(plan, state, sampled, "train", attempt, rec)
        rec.clients_sampled += len(sampled)
        rec.bytes_down += sum(t.params.nbytes for t in tasks.values())
        rec.dense_down += dense * len(tasks)
        replies = {r.client: r for r in link.exchange(tasks, plan.deadline_s)}
        updates, ok = [], []
        for c in sampled:  # population order: aggregation sums in the same order in every mode
            r = replies.get(c)
            if r is None or r.task_id != tasks[c].task_id or not r.ok:
                down = dl.forget(down, c)  # it may not hold this round's reference
            if r is None or r.task_id != tasks[c].task_id:
                continue
            if r.update is not None:
                rec.bytes_up += r.update.nbytes
                rec.dense_up += dense
            if r.error is not None:
                log.warning("round %d: client %s failed: %s", rnd, c, r.error)
                continue
            rec.encode_s += float(r.metrics.get("encode_s", 0.0))
            t_dec = time.perf_counter()
            try:
                delta = check_update(state.params, r)
            except ValueError as e:
                log.warning("round %d: rejected update from %s: %s", rnd, c, e)
                continue
            finally:
                rec.decode_s += time.perf_counter() - t_dec
            updates.append(Update(c, delta, r.num_examples, r.metrics))
            ok.append(r)
        rec.clients_finished = len(updates)
        if len(updates) >= plan.min_replies:
            break
        log.warning(
            "round %d attempt %d: %d of %d clients replied, need %d",
            rnd, attempt, len(updates), len(sampled), plan.min_replies,
        )
    if len(updates) >= plan.min_replies:
        agg_state, params = plan.aggregator.step(state.agg_state, state.params, updates)
        rec.metrics["train_loss"] = _weighted(ok, "train_loss")
    else:
        rec.status = f"skipped: {len(updates)} replies < min_replies={plan.min_replies}"
        agg_state, params = state.agg_state, state.params
    new = ServerState(rnd, params, agg_state, down)
    if rnd % plan.eval_every == 0 or rnd == plan.rounds:
        rec.metrics |= _evaluate(plan, link, new, rec)
    wire1 = link.wire_bytes()
    if wire0 is not None and wire1 is not None:
        rec.metrics |= {"wire_bytes_down": wire1[0] - wire0[0], "wire_bytes_up": wire1[1] - wire0[1]}
    rec.wall_s = time.perf_counter() - t0
    return new, rec


def _evaluate(plan: Plan, link: Link, state: ServerState, rec: RoundRecord) -> dict[str, float]:
    out: dict[str, float] = {}
    if plan.evaluate is not None:
        m = plan.evaluate(state.params)
        out |= {"test_loss": float(m["loss"]), "test_acc": float(m["accuracy"])}
    if plan.federated_eval:
        prev = replace(state, round=state.round - 1)  # tasks carry the round just finished
        sampled = sample_clients(plan, link.clients(), state.round, attempt=1000)
        tasks, _ = _tasks(plan, prev, sampled, "evaluate", 0, rec)
        rec.bytes_down += sum(t.params.nbytes for t in tasks.values())
        replies = [r for r in link.exchange(tasks, plan.deadline_s) if r.ok and r.num_examples > 0]
        out |= {"fed_loss": _weighted(replies, "loss"), "fed_acc": _weighted(replies, "accuracy")}
    return out


def run(
    plan: Plan,
    link: Link,
    state: ServerState,
    on_round: Callable[[ServerState, RoundRecord], None] | None = None,
) -> ServerState:
    """Run rounds ``state.round + 1 .. plan.rounds``; ``on_round`` records and checkpoints."""
    while state.round < plan.rounds:
        state, rec = run_round(plan, link, state)
        if on_round is not None:
            on_round(state, rec)
    return state
