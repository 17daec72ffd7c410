"""Secure aggregation in the round engine: SecAgg+ as four exchanges inside one round.

References: Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (SecAgg+, a sparse graph); Bonawitz et al., "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017 (``complete: true``).
The protocol is pure functions in :mod:`fedkit.secure.secagg`; this module plugs them into the
engine as task kinds, client steps and a round policy, so one code path runs in-process and
over gRPC, and the same bytes are counted in both.

==================  =============================  ====================================  =============
kind                task payload                   the client                            reply payload
==================  =============================  ====================================  =============
secagg_advertise    the model (downlink codec)     trains, puts its update into the      AdvertiseKeys
                                                   field, draws a fresh 32-byte secret
secagg_share        Neighbours (graph, keys)       Shamir-shares its two secrets and     ShareKeys
                                                   seals each share to its neighbour
secagg_masked       ShareInbox (sealed shares)     opens them, masks its field input     MaskedInput
secagg_unmask       UnmaskRequest (who dropped)    reveals b- or s-shares, forgets all   UnmaskShares
==================  =============================  ====================================  =============

Protocol payloads are ``Encoded("secagg", message bytes)``. A client's secret, field input and
the shares it holds live in ``ClientState.secagg`` (:class:`Held`) between exchanges, never on
a wire in clear, and are dropped after unmasking (or when a task of another round comes).
:class:`SecAggRound` moves to the next stage once every asked client has answered or the
stage's deadline passed; a client lost, failed or refused at a stage is one of the protocol's
dropouts. The server holds only the running sum of masked inputs (``ServerState.masked_sum``)
and hands the engine **one** combined update per round:

- client i's field input is ``[q(w_i delta_i) (d values), m_i, c_i, k_i]``: its weighted
  update quantised into the field, its example count capped at ``max_weight`` (m_i), how many
  of its values the clipping range cut (c_i) and whether its count was capped (k_i, 0 or 1);
  the last three are plain integers, so their sums are exact and the server learns only the
  totals (``secagg_clipped`` and ``secagg_capped`` in the metrics say when ``clip`` or
  ``max_weight`` is too small);
- ``weighting: examples``: w_i = m_i / max_weight, so the combined delta
  ``max_weight * sum_i q_i / sum_i m_i`` is FedAvg's example-weighted mean (within the
  quantisation step); ``uniform``: w_i = 1, the delta is ``sum_i q_i / |survivors|``;
- its ``num_examples`` is ``sum_i m_i``, so a mean-type aggregator (fedavg, fedavgm, fedadam,
  fedyogi, fedadagrad) applies it as it would the average. Robust aggregators need each update
  and are refused by the scenario, as are uplink codecs: the field quantiser *is* the uplink
  codec (quantisation before masking is the sound composition).

Precision: each value is off by less than one step ``2 clip / levels`` per client, and
``levels = (2^bits - 1) // n`` for the n clients a round samples, so the sum cannot wrap.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedkit.runtime.policy import Action, Aggregate, Await, Close, Send, View
from fedkit.runtime.task import SecAggAdvertiseTask, SecAggField, TrainTask
from fedkit.secure import secagg as sa
from fedkit.secure.field import FieldSpec, dequantize_sum, flatten, quantize
from fedkit.types import Arrival, ClientId, Encoded, Params, Reply, Task, Update

log = logging.getLogger("fedkit.secagg")

KINDS = ADVERTISE, SHARE, MASKED, UNMASK = (
    "secagg_advertise", "secagg_share", "secagg_masked", "secagg_unmask")
"""The task kinds of one round, in protocol order."""

STAGES = ("advertise", "share", "masked", "unmask")
"""Short stage names, as in the metrics (``secagg_bytes_up_<stage>``)."""

CODEC = "secagg"
"""The codec name of every protocol payload."""

EXTRA = 3
"""Plain integers after the update in a field input: example count (capped), clipped, capped."""

REPLIES: Mapping[str, type] = {ADVERTISE: sa.AdvertiseKeys, SHARE: sa.ShareKeys,
                               MASKED: sa.MaskedInput, UNMASK: sa.UnmaskShares}
"""What a client answers to each kind."""

_REQUESTS: Mapping[str, type] = {SHARE: sa.Neighbours, MASKED: sa.ShareInbox,
                                 UNMASK: sa.UnmaskRequest}


def wrap(msg: sa.Message) -> Encoded:
    """A protocol message as a payload."""
    return Encoded(CODEC, sa.encode_message(msg))


def message(enc: Encoded, want: type) -> Any:
    """The ``want`` message a payload carries; ValueError naming what is wrong otherwise."""
    if enc.codec != CODEC:
        raise ValueError(f"payload is a {enc.codec[:64]!r} frame, not a secagg message")
    msg = sa.decode_message(enc.data)
    if not isinstance(msg, want):
        raise ValueError(f"expected {want.__name__}, got {type(msg).__name__}")
    return msg


def field_spec(cfg: SecAggField) -> FieldSpec:
    return FieldSpec(cfg.clip, cfg.levels, cfg.bits)


# ---------------------------------------------------------------------------- client


def field_input(cfg: SecAggField, delta: Params, num_examples: int, rng: np.random.Generator) -> np.ndarray:
    """``[q(w delta), min(n, max_weight), clipped, capped]`` in the field's words (module
    docstring)."""
    if num_examples < 1:
        raise ValueError("secagg: a client without training examples cannot take part")
    if cfg.max_weight > cfg.levels:
        raise ValueError(f"secagg: max_weight {cfg.max_weight} exceeds the field's {cfg.levels} levels")
    spec = field_spec(cfg)
    m = min(int(num_examples), cfg.max_weight)
    v = flatten(delta)
    if cfg.weighting == "examples":
        v = v * (m / cfg.max_weight)
    clipped = int(np.count_nonzero(np.abs(v) > cfg.clip))
    q = quantize(spec, v, rng)
    tail = [m, min(clipped, cfg.levels), int(num_examples > cfg.max_weight)]
    return np.concatenate([q, np.array(tail, dtype=spec.dtype)])


@dataclass(frozen=True)
class Held:
    """A client's part of one round between exchanges (never sent): the protocol state, which
    holds its secret and its neighbours' shares, and its field input until it is masked."""

    round: int
    protocol: sa.ClientState
    input: np.ndarray | None


def advertise(
    cfg: SecAggAdvertiseTask, task: Task, reply: Reply, rng: np.random.Generator,
    secret: bytes | None = None,
) -> tuple[Held, Reply]:
    """After local training: the field input and fresh keys; the reply carries only the two
    public keys (and the training metrics; the example count rides inside the masked sum).

    ``secret`` is a fresh ``os.urandom(32)``: the one draw not keyed by the seed, since whoever
    knows it can strip the client's masks. Results do not depend on it (the masks cancel).
    """
    if reply.delta is None:
        raise RuntimeError("secagg: the training handler returned no update to mask")
    t0 = time.perf_counter()
    x = field_input(cfg.secagg, reply.delta, reply.num_examples, rng)
    conf = sa.SecAggConfig(dim=x.size, field=field_spec(cfg.secagg))
    state, msg = sa.advertise(conf, task.round, task.client, secret or os.urandom(32))
    metrics = dict(reply.metrics) | {"encode_s": time.perf_counter() - t0}
    out = replace(reply, num_examples=0, update=wrap(msg), delta=None, metrics=metrics)
    return Held(task.round, state, x), out


def _share(held: Held, msg: Any) -> tuple[Held | None, sa.Message]:
    proto, out = sa.share_keys(held.protocol, msg)
    return replace(held, protocol=proto), out


def _masked(held: Held, msg: Any) -> tuple[Held | None, sa.Message]:
    if held.input is None:
        raise sa.SecAggError("secagg: this client has already sent its masked input")
    proto, out = sa.masked_input(held.protocol, msg, held.input)
    return replace(held, protocol=proto, input=None), out


def _unmask(held: Held, msg: Any) -> tuple[Held | None, sa.Message]:
    _, out = sa.unmask(held.protocol, msg)
    return None, out  # the round is over for this client: forget every secret


_STEPS: Mapping[str, Callable[[Held, Any], tuple[Held | None, sa.Message]]] = {
    SHARE: _share, MASKED: _masked, UNMASK: _unmask}


def step(held: Held | None, task: Task) -> tuple[Held | None, Reply]:
    """One of the later exchanges: the server's message in, the client's answer out."""
    if held is None or held.round != task.round:
        raise RuntimeError(
            f"{task.kind} for round {task.round}: this client holds no secure-aggregation state "
            "of that round (it did not advertise keys, or it restarted)")
    msg = message(task.params, _REQUESTS[task.kind])
    t0 = time.perf_counter()
    new, out = _STEPS[task.kind](held, msg)
    reply = Reply(task.task_id, task.client, task.round, 0, update=wrap(out),
                  metrics={"secagg_s": time.perf_counter() - t0}, version=task.version)
    return new, reply


# ---------------------------------------------------------------------------- server


Layout = tuple[tuple[tuple[int, ...], Any], ...]


@dataclass(frozen=True)
class SecAggPlan:
    """Secure aggregation's settings, built once from a scenario: what every client is told
    (``field``), the model's layout (to shape the combined delta) and the protocol's graph."""

    field: SecAggField
    layout: Layout
    degree: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None
    complete: bool = False
    seed: int = 0

    @property
    def dim(self) -> int:
        return sum(math.prod(shape) for shape, _ in self.layout) + EXTRA

    def config(self, t: TrainTask) -> SecAggAdvertiseTask:
        """The advertise task's config: what a training task carries, plus the field."""
        return SecAggAdvertiseTask(**{k: getattr(t, k) for k in TrainTask.model_fields}, secagg=self.field)

    def protocol(self) -> sa.SecAggConfig:
        return sa.SecAggConfig(
            dim=self.dim, field=field_spec(self.field), degree=self.degree, threshold=self.threshold,
            min_survivors=self.min_survivors, complete=self.complete, seed=self.seed)

    def combine(
        self, agg: sa.Aggregate, version: int, metrics: Mapping[str, float],
    ) -> tuple[Update, dict[str, float]]:
        """The protocol's field sum as one update (module docstring), and the sums of the
        clipped values and of the capped example counts."""
        d, n = self.dim - EXTRA, len(agg.survivors)
        total = dequantize_sum(field_spec(self.field), agg.total[:d], n)
        m = int(agg.total[d])
        counts: dict[str, float] = {"secagg_clipped": int(agg.total[d + 1]),
                                    "secagg_capped": int(agg.total[d + 2])}
        if m < 1:
            raise sa.SecAggError(f"secagg round {agg.round}: the survivors' example counts sum to {m}")
        scale = self.field.max_weight / m if self.field.weighting == "examples" else 1.0 / n
        flat, delta, at = total * scale, [], 0
        for shape, dtype in self.layout:
            size = math.prod(shape)
            delta.append(flat[at : at + size].reshape(shape).astype(dtype))
            at += size
        return Update(f"secagg({n} clients)", delta, m, dict(metrics), version), counts


@dataclass(frozen=True)
class _State:
    stage: int  # index into KINDS
    server: sa.ServerState
    waiting: frozenset[ClientId]
    version: int
    losses: Mapping[ClientId, float] = field(default_factory=dict)
    up: tuple[int, ...] = (0, 0, 0, 0)
    down: tuple[int, ...] = (0, 0, 0, 0)
    server_s: float = 0.0


_CLOSE: tuple[Callable[[sa.ServerState], tuple[sa.ServerState, Any]], ...] = (
    sa.close_advertise, sa.close_share_keys, sa.close_masked_input, sa.close_unmask)


@dataclass(frozen=True)
class SecAggRound:
    """One SecAgg+ round: advertise keys (with local training), share keys, masked input,
    unmask; each stage waits for every asked client or its deadline, then the next begins with
    the clients that answered. Ends with ``Aggregate`` of the one combined update, or with
    ``Close("skipped: secagg round r aborted at stage ...")`` when dropouts pass the threshold.

    ``deadline_s`` bounds the advertise stage (local training), ``stage_deadline_s`` each later
    one; ``min_replies`` masked inputs are needed to unmask. The round's metrics row gets
    ``secagg_*``: degree, threshold, survivors, bytes up per stage, bytes down of the protocol
    stages (the advertise stage's downlink is the model, in ``bytes_down``), clipped values,
    capped example counts and the server's protocol seconds.
    """

    plan: SecAggPlan
    deadline_s: float | None = None
    stage_deadline_s: float | None = None
    min_replies: int = 1

    def start(self, view: View, carried: Any = None) -> tuple[_State | None, list[Action]]:
        sampled = view.sample(0)
        try:
            server = sa.server_init(self.plan.protocol(), view.round, sampled)
        except ValueError as e:
            return None, [Close(f"skipped: {e}")]
        state = _State(0, server, frozenset(server.sampled), view.version)
        return state, self._send(view, state, None)

    def on_arrival(
        self, view: View, state: _State, arrival: Arrival, update: Update | None
    ) -> tuple[_State, list[Action]]:
        c, r = arrival.task.client, arrival.reply
        if arrival.task.kind != KINDS[state.stage]:
            return state, []
        up = list(state.up)
        if r is not None and r.update is not None:
            up[state.stage] += r.update.nbytes
        state = replace(state, waiting=state.waiting - {c}, up=tuple(up))
        if update is not None and r is not None and r.update is not None:
            state = self._receive(view, state, c, r)
        return (state, []) if state.waiting else self._close(view, state)

    def on_deadline(self, view: View, state: _State) -> tuple[_State, list[Action]]:
        return self._close(view, replace(state, waiting=frozenset()))

    def _receive(self, view: View, state: _State, client: ClientId, r: Reply) -> _State:
        """Take one accepted reply into the protocol; a message it refuses makes a dropout."""
        assert r.update is not None
        t0 = time.perf_counter()
        try:
            server = sa.receive(state.server, message(r.update, REPLIES[KINDS[state.stage]]))
        except ValueError as e:  # SecAggError: e.g. shares sealed to clients not its neighbours
            log.warning("round %d: secagg %s from %s refused: %s", view.round, STAGES[state.stage], client, e)
            return replace(state, server_s=state.server_s + time.perf_counter() - t0)
        losses = state.losses
        if state.stage == 0 and "train_loss" in r.metrics:
            losses = {**losses, client: float(r.metrics["train_loss"])}
        return replace(state, server=server, losses=losses, server_s=state.server_s + time.perf_counter() - t0)

    def _close(self, view: View, state: _State) -> tuple[_State, list[Action]]:
        t0 = time.perf_counter()
        try:
            server, out = _CLOSE[state.stage](state.server)
            state = replace(state, server=server, server_s=state.server_s + time.perf_counter() - t0)
            if state.stage == len(KINDS) - 1:
                survivors = sorted(out.survivors)
                losses = [state.losses[c] for c in survivors if c in state.losses]
                metrics = {"train_loss": float(np.mean(losses))} if losses else {}
                update, counts = self.plan.combine(out, state.version, metrics)
                return state, [Aggregate((update,), clients=len(survivors)),
                               Close("ok", metrics=self._metrics(state) | counts)]
        except sa.SecAggError as e:  # SecAggAbort: too many dropouts; or inconsistent shares
            state = replace(state, server_s=state.server_s + time.perf_counter() - t0)
            return state, [Close(f"skipped: {e}", metrics=self._metrics(state))]
        if state.stage == 2 and len(server.u3) < self.min_replies:
            why = f"skipped: {len(server.u3)} masked inputs < min_replies={self.min_replies}"
            return state, [Close(why, metrics=self._metrics(state))]
        payloads = {c: wrap(m) for c, m in sorted(out.items())}
        nxt = state.stage + 1
        down = list(state.down)
        down[nxt] = sum(p.nbytes for p in payloads.values())
        state = replace(state, stage=nxt, waiting=frozenset(payloads), down=tuple(down))
        return state, self._send(view, state, payloads)

    def _send(self, view: View, state: _State, payloads: Mapping[ClientId, Encoded] | None) -> list[Action]:
        limit = self.deadline_s if state.stage == 0 else self.stage_deadline_s
        clients: Sequence[ClientId] = state.server.sampled if payloads is None else tuple(payloads)
        return [Send(KINDS[state.stage], tuple(clients), payloads=payloads),
                Await(None if limit is None else view.now + limit)]

    @staticmethod
    def _metrics(state: _State) -> dict[str, float]:
        s = state.server
        out: dict[str, float] = {"secagg_degree": s.degree, "secagg_threshold": s.threshold,
                                 "secagg_survivors": len(s.u3), "secagg_server_s": state.server_s}
        for i, name in enumerate(STAGES):
            out[f"secagg_bytes_up_{name}"] = state.up[i]
            if i:
                out[f"secagg_bytes_down_{name}"] = state.down[i]
        return out
