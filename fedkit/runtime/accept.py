"""The one acceptance rule: does a reply become an update?

The round engine calls :func:`accept` on every arrival, and the gRPC server calls the same
function while the reply is still on the wire (its early validation), handing the result to the
engine so a deployed server decodes each update once. So a malformed reply is refused with the
same message in every mode. A refusal is data, not a crash: :class:`Rejected` carries the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.compression import decode, family
from fedkit.compression.limits import layout_of
from fedkit.runtime import secagg
from fedkit.types import DecodeError, Params, Reply, Task, Update
from fedkit.untrusted import shorten


class Rejected(ValueError):
    """A reply that does not become an update; ``str()`` says why."""


@dataclass(frozen=True)
class Acceptance:
    """What the server accepts.

    ``max_staleness``: refuse updates trained on a model more than this many versions old
    (None: any). Sanity bounds against finite but absurd updates (one update of 3e38 values
    diverges the model; ``num_examples = 2**64 - 1`` dominates the average):
    ``max_norm_ratio`` refuses an update whose L2 norm exceeds this multiple of the model's norm
    (``ref_norm``, the initial model's, at least 1); ``max_num_examples`` caps the example count
    a reply may claim, and ``examples`` (registered at enrolment) caps it per client.
    ``codecs``: the codec families (:func:`fedkit.compression.family`) an update may be
    encoded with, from the scenario's uplink (None: any codec the registry knows).
    ``layouts``: clients whose update has another layout than ``layout`` (a LoRA client of
    another rank); ``check(client, delta)``: the aggregator's own refusals (a ValueError: a
    frozen LoRA factor that changed), after the layout's. ``unsent``: positions of the layout an
    update leaves out (:func:`fedkit.peft.model.unsent`: factors no client uploads); the update
    is decoded against the rest and gets zero deltas there.
    """

    layout: tuple[tuple[tuple[int, ...], np.dtype], ...]
    max_staleness: int | None = None
    max_norm_ratio: float | None = None
    ref_norm: float = 1.0
    max_num_examples: int | None = None
    examples: Mapping[str, int] | None = None
    codecs: frozenset[tuple[str, ...]] | None = None
    layouts: Mapping[str, tuple[tuple[tuple[int, ...], np.dtype], ...]] | None = None
    check: Callable[[str, Params], None] | None = None
    unsent: tuple[int, ...] = ()

    @classmethod
    def for_params(cls, params: Params, **kw: Any) -> Acceptance:
        return cls(tuple(layout_of(params)), ref_norm=max(l2_norm(params), 1.0), **kw)


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of a list of arrays, in float64 (no overflow for float32 extremes)."""
    return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays))


def _examples(rule: Acceptance, reply: Reply) -> None:
    n = reply.num_examples
    if rule.max_num_examples is not None and n > rule.max_num_examples:
        raise Rejected(f"num_examples {n} exceeds the server's ceiling max_num_examples={rule.max_num_examples}")
    if rule.examples is not None:
        known = rule.examples.get(reply.client)
        if known is None:
            raise Rejected(f"client {reply.client[:64]!r} has no registered example count")
        if n > known:
            raise Rejected(f"num_examples {n} exceeds the {known} registered for {reply.client[:64]!r}")


def _codec(rule: Acceptance, codec: str) -> None:
    if rule.codecs is None:
        return
    try:
        fam = family(codec)
    except (ValueError, TypeError, RecursionError):
        raise Rejected(f"update names an unparsable codec {shorten(codec)}") from None
    if fam not in rule.codecs:
        allowed = ", ".join(sorted("|".join(f) for f in rule.codecs))
        raise Rejected(
            f"update is encoded with {shorten(codec)}, not the scenario's uplink family ({allowed}); "
            "compression.uplink_accept lists others a server takes"
        )


def _identity(task: Task, reply: Reply) -> None:
    if reply.task_id != task.task_id:
        raise Rejected(f"reply names task {reply.task_id!r}, expected {task.task_id!r}")
    if reply.client != task.client:
        raise Rejected(f"reply comes from {reply.client!r}, the task went to {task.client!r}")
    if reply.round != task.round:
        raise Rejected(f"reply is for round {reply.round}, the task is of round {task.round}")
    if reply.version != task.version:
        raise Rejected(f"reply says model version {reply.version}, the task sent {task.version}")
    if reply.error is not None:
        raise Rejected(f"client failed: {reply.error}")
    for k, v in reply.metrics.items():
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise Rejected(f"metric {k[:64]!r} is not a finite number")


def _train(rule: Acceptance, task: Task, reply: Reply) -> Update:
    if reply.update is None:
        raise Rejected("training reply carries no update")
    if reply.num_examples <= 0:
        raise Rejected(f"num_examples must be positive, got {reply.num_examples}")
    _examples(rule, reply)
    _codec(rule, reply.update.codec)
    full = rule.layout if rule.layouts is None else rule.layouts.get(reply.client, rule.layout)
    layout = tuple(x for i, x in enumerate(full) if i not in rule.unsent)
    try:
        delta = decode(reply.update, like=list(layout))  # allocation bounded by the model
    except DecodeError as e:
        raise Rejected(f"malformed update: {e}") from None
    if len(delta) != len(layout):
        raise Rejected(f"update has {len(delta)} tensors, the model has {len(layout)}")
    for i, (d, (shape, dtype)) in enumerate(zip(delta, layout, strict=True)):
        if d.shape != shape:
            raise Rejected(f"tensor {i}: shape {d.shape}, expected {shape}")
        if d.dtype != dtype:
            raise Rejected(f"tensor {i}: dtype {d.dtype}, expected {dtype}")
        if not np.isfinite(d).all():
            raise Rejected(f"tensor {i}: contains NaN or Inf")
    if rule.unsent:
        sent = iter(delta)
        delta = [np.zeros(shape, dtype) if i in rule.unsent else next(sent) for i, (shape, dtype) in enumerate(full)]
    if rule.max_norm_ratio is not None:
        norm, limit = l2_norm(delta), rule.max_norm_ratio * rule.ref_norm
        if norm > limit:
            raise Rejected(
                f"update norm {norm:.3g} exceeds {rule.max_norm_ratio:g} x the model's norm "
                f"({limit:.3g}; server.max_norm_ratio)"
            )
    if rule.check is not None:
        try:
            rule.check(reply.client, delta)
        except ValueError as e:
            raise Rejected(str(e)) from None
    return Update(reply.client, delta, reply.num_examples, dict(reply.metrics), task.version)


def _evaluate(rule: Acceptance, task: Task, reply: Reply) -> Update:
    if reply.update is not None:
        raise Rejected("evaluation reply carries an update")
    if reply.num_examples < 0:
        raise Rejected(f"num_examples must be >= 0, got {reply.num_examples}")
    _examples(rule, reply)
    return Update(reply.client, [], reply.num_examples, dict(reply.metrics), task.version)


def _secagg(rule: Acceptance, task: Task, reply: Reply) -> Update:
    """A secure-aggregation stage answers with one protocol message from that client for that
    round (a masked input as long as the model plus its two counts); the round's policy takes it
    into the protocol. The update is empty: no individual update exists on the server."""
    if reply.update is None:
        raise Rejected(f"{task.kind} reply carries no protocol message")
    try:
        msg = secagg.message(reply.update, secagg.REPLIES[task.kind])
    except ValueError as e:
        raise Rejected(f"malformed {task.kind} reply: {e}") from None
    if msg.client != task.client or msg.round != task.round:
        raise Rejected(f"{task.kind} message names client {msg.client[:64]!r} round {msg.round}, "
                       f"the task went to {task.client!r} for round {task.round}")
    if task.kind == secagg.MASKED:
        dim = sum(math.prod(shape) for shape, _ in rule.layout) + secagg.EXTRA
        if msg.vector.shape != (dim,):
            raise Rejected(f"masked input has {msg.vector.size} values, expected {dim}")
    return Update(reply.client, [], 0, dict(reply.metrics), task.version)


KindRule = Callable[[Acceptance, Task, Reply], Update]
RULES: dict[str, KindRule] = {
    "train": _train, "evaluate": _evaluate, "split_train": _train,
    **dict.fromkeys(secagg.KINDS, _secagg),
}
"""Per task kind: what a valid answer looks like. A split task answers like a training task:
the delta of the client part (the plan's params are the client part); secure aggregation's
stages each with a protocol message."""


def accept(rule: Acceptance, task: Task, reply: Reply, version: int | None = None) -> Update:
    """The update ``reply`` carries for ``task``, or :class:`Rejected` saying why not.

    ``version`` is the server's current model version, for the staleness check (None: skip it,
    as the transport does while the reply is still on the wire).
    """
    _identity(task, reply)
    kind = RULES.get(task.kind)
    if kind is None:
        raise Rejected(f"no acceptance rule for task kind {task.kind!r}")
    if version is not None and rule.max_staleness is not None:
        stale = version - task.version
        if stale > rule.max_staleness:
            raise Rejected(f"update is {stale} versions stale (max_staleness={rule.max_staleness})")
    return kind(rule, task, reply)


def weighted(pairs: Sequence[tuple[int, Mapping[str, float]]], key: str) -> float:
    """Example-weighted mean of one metric over replies that report it (NaN if none do)."""
    got = [(n, m[key]) for n, m in pairs if key in m]
    total = sum(n for n, _ in got)
    return sum(n * v for n, v in got) / total if total else math.nan
