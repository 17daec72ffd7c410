"""fedkit codecs on Flower's wire: a client mod that sends fedkit's compressed frame of the update,
and the server side that reads it back.

A Flower ``ClientApp`` replies to a train message with its local model. :func:`uplink_mod`
(a ``flwr.clientapp`` mod) replaces that reply's ``ArrayRecord`` with the fedkit frame of the
update ``local - global`` encoded by ``fedkit.compression.make(spec)`` -- the very bytes fedkit
sends, so ``topk(ratio=0.1)|quant(bits=8)|zstd`` saves what it saves in fedkit. Encoder memory
(error-feedback residuals) lives in the node's ``Context.state``, which Flower carries between
rounds. Stochastic codecs draw from ``rng(seed, "uplink", round, partition)``.

On the server, :class:`~fedkit.compat.flower.FedkitStrategy` decodes frames natively;
:class:`Decoding` wraps any Flower strategy (``FedAvg``, ``FedAdam``, ...) and hands it plain
replies again (``global + decoded delta``), so it needs no change::

    app = ClientApp(mods=[uplink_mod("ef:topk(ratio=0.1)|quant(bits=8)|zstd")])
    strategy = Decoding(FedAvg())
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedkit import rng as frng
from fedkit.aggregation.base import check_like
from fedkit.compat.flower.records import (
    frame_to_record,
    load_codec_state,
    only_array_record,
    params_to_record,
    record_frame,
    record_to_params,
    save_codec_state,
)
from fedkit.compression import decode, make
from fedkit.types import Params


def server_round(content: RecordDict) -> int:
    """The ``server-round`` a Flower strategy put in the message's config (0 if none)."""
    for record in content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])  # type: ignore[arg-type]
    return 0


def _is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == MessageType.TRAIN


def uplink_mod(spec: str, *, seed: int = 0) -> Mod:
    """A Flower client mod that sends train replies as fedkit's encoded update (see module doc).

    The spec is checked here, so a typo fails when the ``ClientApp`` is built.
    """
    codec = make(spec)

    def mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, ctx)
        if not _is_train(msg) or reply.has_error():
            return reply
        _, sent = only_array_record(msg.content, "train message")
        key, got = only_array_record(reply.content, "train reply")
        if record_frame(got) is not None:
            return reply  # already a fedkit frame (an inner mod encoded it)
        glob = record_to_params(sent)
        delta = local_delta(record_to_params(got), glob, what="the ClientApp's train reply")
        memory = load_codec_state(ctx.state, codec.spec)
        if memory is None:
            memory = codec.init(delta)
        who = ctx.node_config.get("partition-id", ctx.node_id)
        gen = frng.rng(seed, "uplink", server_round(msg.content), str(who))
        memory, enc = codec.encode(memory, delta, gen)
        if memory is not None:
            save_codec_state(ctx.state, codec.spec, memory)
        reply.content[key] = frame_to_record(enc)
        return reply

    return mod


def local_delta(local: Params, global_params: Params, what: str = "train reply") -> Params:
    """``local - global`` in the global model's dtypes (shapes checked first)."""
    check_like(local, global_params, what=what)
    return [
        (np.asarray(x) - g).astype(g.dtype, copy=False) for x, g in zip(local, global_params, strict=True)
    ]


def reply_delta(content: RecordDict, global_params: Params) -> Params:
    """The update a train reply carries: its fedkit frame decoded (shapes checked against the
    global model before anything is allocated), or ``local - global`` of a plain reply."""
    _, record = only_array_record(content, "train reply")
    enc = record_frame(record)
    if enc is None:
        return local_delta(record_to_params(record), global_params)
    return decode(enc, like=global_params)


class Decoding(Strategy):
    """Any Flower strategy, reading fedkit frames: each train reply that carries one is handed
    to ``strategy`` as the plain ``ArrayRecord`` of ``global + decoded delta`` (the global of
    that round, with its keys). Everything else is the wrapped strategy's."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._global: tuple[list[str], Params] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = (list(arrays.keys()), record_to_params(arrays))
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def _plain(self, msg: Message) -> Message:
        if msg.has_error() or self._global is None:
            return msg
        key, record = only_array_record(msg.content, "train reply")
        if record_frame(record) is None:
            return msg
        keys, glob = self._global
        delta = reply_delta(msg.content, glob)
        local = [(g + d).astype(g.dtype, copy=False) for g, d in zip(glob, delta, strict=True)]
        msg.content[key] = params_to_record(local, keys)
        return msg

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, [self._plain(m) for m in replies])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
