"""The client role: turn a task into a reply. Identical in-process, in a client process and on
a device; only the Link that delivers the task differs.

A client is a function ``(state, task, context) -> (state, reply)``: its state is a value (its
data, its codecs' memory, the model reference it holds for downlink deltas), never mutated
behind the caller's back. Around the kind's handler sit small middleware functions (*mods*)
of the same shape plus the inner function, outermost first::

    reply = mods[0](state, task, ctx, lambda s, t, c: mods[1](s, t, c, ... handler))

The uplink encoder is one (it turns the handler's raw ``delta`` into the encoded update);
secure aggregation's mask (:func:`secagg_mask`) is another, inside it; DP clipping and noise
(:func:`fedkit.runtime.privacy.dp_clip`, driven by the task's ``dp``) go inside that, so they
see the raw delta before it is quantised and masked; a simulated attacker's mod
(fedkit/runtime/adversary.py) sits just outside clipping. :class:`ClientHost` holds the current state between
tasks and is what a Link calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedkit import rng as frng
from fedkit.compression import make
from fedkit.models import LocalData, build_model, evaluate, get_params, keyed_torch, set_params
from fedkit.models.params import named_by
from fedkit.models.train import TrainConfig, TrainFn, sgd_train
from fedkit.peft.model import fold_base, unsent
from fedkit.registry import resolve_import
from fedkit.runtime import secagg
from fedkit.runtime import task as tasks
from fedkit.runtime.downlink import receive
from fedkit.runtime.privacy import dp_clip
from fedkit.split.channel import ClientHalf, StreamChannel
from fedkit.split.client import ClientConfig as SplitClientConfig
from fedkit.split.client import train_split
from fedkit.split.privacy import Defence
from fedkit.split.schemes import SplitSetup, make_setup
from fedkit.split.sfprompt import SFPrompt
from fedkit.split.wire import SplitConnect
from fedkit.types import ClientId, Params, Reply, Task


@dataclass(frozen=True)
class ClientState:
    """One client: its data, its codecs' memory (error-feedback residuals) by codec spec, the
    (round, model) it holds for downlink deltas, and its part of the current secure-aggregation
    round (secrets, field input, neighbours' shares: never sent, dropped after unmasking)."""

    id: ClientId
    train: LocalData
    test: LocalData | None = None
    codec: Mapping[str, Any] = field(default_factory=dict)
    held: tuple[int, Params] | None = None
    secagg: secagg.Held | None = None
    personal: Mapping[int, np.ndarray] = field(default_factory=dict)  # tensors kept here (FedSA's B)

    @classmethod
    def from_arrays(
        cls,
        client_id: ClientId,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
    ) -> ClientState:
        def data(x: np.ndarray | None, y: np.ndarray | None) -> LocalData | None:
            if x is None or y is None:
                return None
            tx = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
            return LocalData(tx, torch.from_numpy(np.ascontiguousarray(y)).to(torch.int64))

        tr = data(x_train, y_train)
        assert tr is not None
        return cls(client_id, tr, data(x_test, y_test))

    @property
    def num_train(self) -> int:
        return len(self.train)


_SETUPS: dict[str, SplitSetup] = {}  # split parts by task config, one cut per process
_SETUPS_LOCK = threading.Lock()


class ModelCache:
    """One module per model spec per process: clients share it instead of rebuilding it (and
    one split of it per split configuration)."""

    def __init__(self) -> None:
        self._models: dict[str, nn.Module] = {}
        self._setups: dict[str, SplitSetup] = {}
        self._last: tuple[tasks.ModelRef, nn.Module] | None = None  # in-process tasks share one ref

    def get(self, model: tasks.ModelRef) -> nn.Module:
        if self._last is not None and self._last[0] is model:
            return self._last[1]
        key = json.dumps(model.model_dump(mode="json"), sort_keys=True)
        if key not in self._models:
            self._models[key] = build_model(model.spec, model.input_shape, model.num_classes)
        self._last = (model, self._models[key])
        return self._models[key]

    def split_setup(self, cfg: tasks.SplitTrainTask) -> SplitSetup:
        """The parts of ``cfg``'s model (architecture only: weights come with each task), cut once
        per process: torch.fx patches ``nn.Module.__call__`` process-wide while it traces, so a
        trace in one client thread would capture another thread's forward; the parts are safe
        to share (each thread runs its own copy, fedkit.split.optim)."""
        key = json.dumps(cfg.model_dump(mode="json", include={"model", "scheme", "cuts", "bottleneck", "seed"}),
                         sort_keys=True)
        if key not in self._setups:
            with _SETUPS_LOCK:
                setup = _SETUPS.get(key)
                if setup is None:
                    m = cfg.model
                    setup = _SETUPS[key] = make_setup(cfg.scheme, self.get(m), cfg.cuts, m.input_shape,
                                                      m.num_classes, seed=cfg.seed, bottleneck=cfg.bottleneck)
            self._setups[key] = setup
        return self._setups[key]


@dataclass(frozen=True)
class Context:
    """What a handler or mod may use besides its state: the parsed config, keyed RNGs, models,
    and how to open a split task's stream (``connect``; None where the host has none)."""

    task: Task
    config: Any
    models: ModelCache
    connect: SplitConnect | None = None
    train: TrainFn | None = None  # replaces the configured training function (stacked execution)

    def keys(self) -> tuple[int | str, ...]:
        """The key parts after the purpose: (round, client), plus the repeat of an async task."""
        repeat = getattr(self.config, "repeat", 0)  # the n-th task of this round (async), n > 0
        return (self.task.round, self.task.client) + ((repeat,) if repeat else ())

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator keyed by (seed, purpose, round, client): the only source of draws."""
        return frng.rng(self.config.seed, purpose, *self.keys())

    def seed_int(self, purpose: str) -> int:
        return frng.seed_int(self.config.seed, purpose, *self.keys())


ClientFn = Callable[[ClientState, Task, Context], tuple[ClientState, Reply]]
Mod = Callable[[ClientState, Task, Context, ClientFn], tuple[ClientState, Reply]]


_codec = functools.lru_cache(maxsize=64)(make)  # codecs are parsed once per spec


def train_fn(cfg: TrainConfig) -> TrainFn:
    return sgd_train if cfg.fn is None else resolve_import(cfg.fn, "training function")


def _receive(state: ClientState, task: Task, ctx: Context) -> tuple[ClientState, Params]:
    params, held = receive(ctx.config.downlink, task.params, state.held)
    return dataclasses.replace(state, held=held), params


def _personal(module: torch.nn.Module, spec: Mapping[str, Any]) -> list[int]:
    """Positions of the tensors a client keeps instead of the sent ones (``spec['peft']['personal']``:
    name parts such as ``lora_B``, FedSA-LoRA's personal factor); none for other models."""
    parts = (spec.get("peft") or {}).get("personal") or ()
    return named_by(list(module.state_dict()), parts) if parts else []


def _with_personal(params: Params, state: ClientState, keep: Sequence[int]) -> Params:
    """The sent params with this client's own tensors in place (the sent ones before its first task)."""
    return [state.personal[i] if i in keep and i in state.personal else a for i, a in enumerate(params)]


def _load(module: torch.nn.Module, params: Params, state: ClientState, spec: Mapping[str, Any]
          ) -> tuple[Params, list[int]]:
    """The sent params into ``module``: the base change folded into the frozen weights (FedEx,
    FLoRA), this client's own tensors (FedSA's B) in place. Returns the params as sent (without
    the base change) and the positions the client keeps."""
    params = fold_base(module, params)
    keep = _personal(module, spec)
    set_params(module, _with_personal(params, state, keep))
    return params, keep


def handle_train(state: ClientState, task: Task, ctx: Context) -> tuple[ClientState, Reply]:
    """Local training from the sent model; the reply carries the raw delta (local - global).
    Tensors the client keeps (FedSA's B) train from its own copy; they and the factors frozen
    on every client (FFA's A) are left out of the update (fedkit.peft.model.unsent)."""
    t0 = time.perf_counter()
    state, params = _receive(state, task, ctx)
    cfg: tasks.TrainTask = ctx.config
    module = ctx.models.get(cfg.model)
    params, keep = _load(module, params, state, cfg.model.spec)
    with keyed_torch(ctx.seed_int("torch-train")):
        fn = ctx.train or train_fn(cfg.train)
        metrics = dict(fn(module, state.train, cfg.train, ctx.rng("train")))
    local = get_params(module)
    skip = set(unsent(list(module.state_dict()), cfg.model.spec))  # frozen / kept factors: no upload
    delta = [n - p for i, (n, p) in enumerate(zip(local, params, strict=True)) if i not in skip]
    if keep:
        state = dataclasses.replace(state, personal={i: local[i] for i in keep})
    metrics["compute_s"] = time.perf_counter() - t0
    n = int(metrics.pop("num_examples", state.num_train))
    reply = Reply(task.task_id, state.id, task.round, n, metrics=metrics, version=task.version, delta=delta)
    return state, reply


def handle_evaluate(state: ClientState, task: Task, ctx: Context) -> tuple[ClientState, Reply]:
    """Loss and accuracy of the sent model on the client's held-out data (none: 0 examples)."""
    state, params = _receive(state, task, ctx)
    reply = Reply(task.task_id, state.id, task.round, 0, metrics={}, version=task.version)
    if state.test is None or len(state.test) == 0:
        return state, reply
    module = ctx.models.get(ctx.config.model)
    _load(module, params, state, ctx.config.model.spec)  # personalised: the client's own B
    with keyed_torch(ctx.seed_int("torch-eval")):
        metrics = evaluate(module, state.test, device=ctx.config.device)
    return state, dataclasses.replace(reply, num_examples=len(state.test), metrics=metrics)


def handle_split_train(state: ClientState, task: Task, ctx: Context) -> tuple[ClientState, Reply]:
    """Split learning's local epochs over the task's split stream; the reply carries the raw
    delta of the client part (local - sent), which the uplink mod encodes like any update."""
    t0 = time.perf_counter()
    state, params = _receive(state, task, ctx)
    cfg: tasks.SplitTrainTask = ctx.config
    if ctx.connect is None:
        raise RuntimeError("this client host cannot open split streams (no SplitConnect)")
    setup = ctx.models.split_setup(cfg)
    half = ClientHalf(cfg.activations, state.id, seed=cfg.seed, round=task.round)
    stream = ctx.connect(task)
    channel = StreamChannel(stream, half, expect_reply=setup.scheme.gradients_down, body_shape=setup.body_shape)
    sfp = None if cfg.sfprompt is None else SFPrompt(**cfg.sfprompt.model_dump())
    ccfg = SplitClientConfig(cfg.scheme, setup.client_modules, cfg.train, cfg.seed, Defence(cfg.nopeek, cfg.noise), sfp)
    try:
        new, m = train_split(ccfg, params, state.train.x, state.train.y, channel, ctx.rng("train"),
                             round=task.round, client=state.id)
    except BaseException as e:
        stream.close(f"{type(e).__name__}: {e}"[:500] or "client failed")
        raise
    stream.close()
    delta = [n - p for n, p in zip(new, params, strict=True)]
    metrics: dict[str, float] = {"train_loss": m["loss"], "steps": m["steps"], "compute_s": time.perf_counter() - t0}
    metrics |= {k: m[k] for k in ("kept", "local_loss") if k in m}  # sfprompt's pruning and local step
    reply = Reply(task.task_id, state.id, task.round, state.num_train, metrics=metrics, version=task.version,
                  delta=delta)
    return state, reply


def handle_secagg_stage(state: ClientState, task: Task, ctx: Context) -> tuple[ClientState, Reply]:
    """Secure aggregation's share-keys, masked-input and unmask exchanges, on the round's state."""
    held, reply = secagg.step(state.secagg, task)
    return dataclasses.replace(state, secagg=held), reply


HANDLERS: dict[str, ClientFn] = {
    "train": handle_train, "evaluate": handle_evaluate, "split_train": handle_split_train,
    "secagg_advertise": handle_train,  # trains; secagg_mask turns the delta into the keys
    "secagg_share": handle_secagg_stage, "secagg_masked": handle_secagg_stage,
    "secagg_unmask": handle_secagg_stage,
}
"""Task kind -> handler. A kind needs a config class in ``fedkit.runtime.task.KINDS`` too."""


def encode_uplink(state: ClientState, task: Task, ctx: Context, inner: ClientFn) -> tuple[ClientState, Reply]:
    """The uplink codec as a mod: raw delta in, encoded update out, codec memory kept per spec."""
    state, reply = inner(state, task, ctx)
    if reply.delta is None:
        return state, reply
    codec = _codec(ctx.config.uplink)
    memory = state.codec.get(codec.spec)
    if memory is None:
        memory = codec.init(reply.delta)
    t0 = time.perf_counter()
    gen = frng.lazy(ctx.config.seed, "uplink", *ctx.keys())  # = ctx.rng("uplink"), made if used
    memory, enc = codec.encode(memory, reply.delta, gen)
    metrics = dict(reply.metrics) | {"encode_s": time.perf_counter() - t0}
    state = dataclasses.replace(state, codec=dict(state.codec) | {codec.spec: memory})
    return state, dataclasses.replace(reply, update=enc, delta=None, metrics=metrics)


def secagg_mask(state: ClientState, task: Task, ctx: Context, inner: ClientFn) -> tuple[ClientState, Reply]:
    """Secure aggregation's client mod: an advertise task's raw delta goes into the field and
    stays on the client (masked at the third exchange); the reply carries the public keys."""
    state, reply = inner(state, task, ctx)
    if task.kind != secagg.ADVERTISE or reply.error is not None:
        return state, reply
    held, reply = secagg.advertise(ctx.config, task, reply, ctx.rng("secagg-quantize"))
    return dataclasses.replace(state, secagg=held), reply


DEFAULT_MODS: tuple[Mod, ...] = (encode_uplink, secagg_mask, dp_clip)
"""Outermost first, so a delta is clipped (and, for local DP, noised) first, then put into
secure aggregation's field and masked, or encoded by the uplink codec: clip before mask."""


def compose(mods: Sequence[Mod], handler: ClientFn) -> ClientFn:
    """``mods[0]`` outermost; the handler innermost."""
    fn = handler
    for mod in reversed(mods):
        fn = (lambda m, inner: lambda s, t, c: m(s, t, c, inner))(mod, fn)
    return fn


def run_task(
    state: ClientState,
    task: Task,
    models: ModelCache,
    mods: Sequence[Mod] = DEFAULT_MODS,
    connect: SplitConnect | None = None,
    train: TrainFn | None = None,
    *,
    handlers: Mapping[str, ClientFn] = HANDLERS,
) -> tuple[ClientState, Reply]:
    """Run one task. Failures become a reply with ``error`` set (and the state unchanged).
    ``handlers`` replace fedkit's own per kind (a Flower client's, fedkit/compat/flower);
    ``train`` replaces the task's training function (an executor that trained it elsewhere).
    A task of another round first drops what an unfinished secure-aggregation round left."""
    if state.secagg is not None and state.secagg.round != task.round:
        state = dataclasses.replace(state, secagg=None)
    try:
        config = tasks.parse(task.kind, task.config)
        if task.kind not in handlers:
            raise ValueError(f"this client serves no {task.kind!r} tasks (only: {', '.join(handlers)})")
        fn = compose(mods, handlers[task.kind])
        new, reply = fn(state, task, Context(task, config, models, connect=connect, train=train))
        if reply.delta is not None:
            raise RuntimeError("a mod chain must end with an encoded update (no encode mod?)")
        return new, reply
    except Exception as e:  # a client's failure is data for the server, not a crash
        return state, Reply(
            task.task_id, state.id, task.round, error=f"{type(e).__name__}: {e}", version=task.version
        )


class ClientHost:
    """Holds one client's state between tasks; calling it runs a task (what a Link calls).

    ``connect`` opens split tasks' streams: in-process a
    :class:`~fedkit.split.local.LocalConnect` on the server's endpoint, over gRPC the ``Split``
    RPC of the client's session (a transport may set it once its session exists). ``handlers``
    replace fedkit's own per task kind (a Flower client's, fedkit/compat/flower).
    """

    def __init__(
        self,
        state: ClientState,
        models: ModelCache | None = None,
        mods: Sequence[Mod] = DEFAULT_MODS,
        connect: SplitConnect | None = None,
        *,
        handlers: Mapping[str, ClientFn] | None = None,
    ):
        self.state = state
        self.models = models or ModelCache()
        self.mods = tuple(mods)
        self.connect = connect
        self.handlers = HANDLERS if handlers is None else dict(handlers)

    def __call__(self, task: Task, train: TrainFn | None = None) -> Reply:
        self.state, reply = run_task(
            self.state, task, self.models, self.mods, self.connect, train, handlers=self.handlers
        )
        return reply


def hosts(
    states: Mapping[ClientId, ClientState],
    connect: SplitConnect | None = None,
    mods: Mapping[ClientId, Sequence[Mod]] | None = None,
) -> dict[ClientId, ClientHost]:
    """One host per client, all sharing one :class:`ModelCache` (one module per process);
    ``mods``: clients whose chain is not :data:`DEFAULT_MODS` (simulated attackers)."""
    models, chains = ModelCache(), mods or {}
    return {cid: ClientHost(st, models, chains.get(cid, DEFAULT_MODS), connect=connect) for cid, st in states.items()}


def personal_to_arrays(states: Mapping[ClientId, ClientState]) -> dict[str, np.ndarray]:
    """The tensors simulated clients keep for themselves (FedSA's B), ``{"<client>/<index>": a}``:
    a checkpoint section standing in for each device's own storage, so a resumed simulation
    continues with what its clients held."""
    return {f"{c}/{i}": a for c, st in states.items() for i, a in st.personal.items()}


def personal_from_arrays(states: Mapping[ClientId, ClientState], arrays: Mapping[str, np.ndarray]
                         ) -> dict[ClientId, ClientState]:
    """``states`` with the personal tensors of :func:`personal_to_arrays` put back."""
    kept: dict[ClientId, dict[int, np.ndarray]] = {}
    for key, a in arrays.items():
        client, _, index = key.rpartition("/")
        if client not in states or not index.isdigit():
            raise ValueError(f"checkpoint holds personal tensor {key!r} of no client of this scenario")
        kept.setdefault(client, {})[int(index)] = np.array(a)
    return {c: dataclasses.replace(st, personal=kept[c]) if c in kept else st for c, st in states.items()}


def save_client_data(path: str | Path, state: ClientState) -> None:
    arrays = {"x_train": state.train.x.numpy(), "y_train": state.train.y.numpy()}
    if state.test is not None:
        arrays |= {"x_test": state.test.x.numpy(), "y_test": state.test.y.numpy()}
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_client_data(path: str | Path, client_id: ClientId) -> ClientState:
    """A device's own data: an ``.npz`` with x_train, y_train and optionally x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read client data: {e}") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (has: {', '.join(arrays) or 'none'})")
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        if x in arrays and len(arrays[x]) != len(arrays.get(y, [])):
            raise ValueError(f"{path}: {x} and {y} have different lengths")
        if x in arrays and not np.isfinite(arrays[x]).all():
            raise ValueError(f"{path}: {x} contains NaN or Inf")
    return ClientState.from_arrays(
        client_id, arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test")
    )
