"""Split-learning schemes: who holds which part, who holds the loss, how a round runs.

References: vanilla SL, Gupta & Raskar 2018 and Vepakomma et al. 2018 (SplitNN); SplitFed V1/V2,
Thapa et al., AAAI 2022 (arXiv 2004.12088); U-shaped SL, Vepakomma et al. 2018; local-loss SL,
Han et al. 2021 ("Accelerating Federated Learning with Split Learning on Locally Generated
Losses"). Notes: REFERENCES.md A1, A2, A4.

* **vanilla** -- clients in turn, in a seeded order (``rng(seed, "split-order", round)``); one
  server part. Client k+1 starts from client k's client part, relayed through the server: client
  k sends its delta up (the uplink codec), the server applies it (FedAvg of that one update) and
  sends the result down to client k+1; those bytes count as model exchange (down and up per
  client). The client part is not averaged.
* **splitfed_v1** -- clients in parallel; the server forks one server-part copy per client at its
  first batch and averages the copies after the round, **sample-weighted** (Thapa et al.'s code
  averages unweighted; the two agree for equal client sizes). Client parts are FedAvg'd. With
  identity codecs and SGD this is exactly FedAvg of the whole model (tested).
* **splitfed_v2** -- one server part trained over the clients' batches, one client's local
  epochs after another in a seeded order; client parts FedAvg'd.
* **ushape** -- two cuts: head and tail on the client, body on the server. The loss and the labels
  never leave the client; per step two round trips (see :mod:`fedkit.split.channel`). Head + tail
  are FedAvg'd; the body is one shared part.
* **local_loss** -- the client trains its part with a small auxiliary head on a local loss and
  sends activations (and labels) only; the server trains its part on them; no gradient comes down.
  Client part + auxiliary head are FedAvg'd. In-process the server consumes the activations as
  they come (a seeded client order); the result does not depend on the client side waiting.
* **sfprompt** -- SFPrompt (Cao, Zhu & Gong 2024, arXiv 2407.17533; REFERENCES.md A3): ushape's
  split of a pre-trained model with prompt tokens, the body frozen on the server, clients in
  parallel; per task EL2N pruning, ushape steps on the kept samples, then a local-loss step with
  the body skipped; prompts + tail are FedAvg'd (:mod:`fedkit.split.sfprompt`).

Where the engine plugs in (:mod:`fedkit.runtime.split`): :func:`make_setup` builds the modules
once; per round the engine hands the server state to the :class:`~fedkit.split.endpoint.Endpoint`,
sends one ``split_train`` task per selected client (splitfed_v1 all at once, the others one after
another in the seeded order), each client runs :func:`fedkit.split.client.train_split` over its
split stream (the endpoint calls ``server_handle``), client parts are aggregated by any FL
aggregator (vanilla: relayed instead), and the endpoint closes the round (``server_end_round``).
:func:`run_round` is that loop in process, the reference for the engine and the tests.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedkit import compression
from fedkit.aggregation.base import Aggregator
from fedkit.aggregation.reduce import weighted_mean
from fedkit.aggregation.server_opt import sgd
from fedkit.models.train import TrainConfig
from fedkit.rng import rng as keyed_rng
from fedkit.rng import seed_int
from fedkit.split.bottleneck import with_bottleneck
from fedkit.split.channel import ByteCount, LocalChannel
from fedkit.split.client import ClientConfig, client_params, train_split
from fedkit.split.partition import split
from fedkit.split.privacy import Defence
from fedkit.split.server import (
    LocalServer,
    ServerConfig,
    ServerState,
    server_begin_round,
    server_end_round,
)
from fedkit.types import ClientId, Params, Update

if TYPE_CHECKING:
    from fedkit.split.sfprompt import SFPrompt

__all__ = ["SCHEMES", "Scheme", "SplitSetup", "initial", "make_setup", "run_round", "whole"]


@dataclass(frozen=True)
class Scheme:
    name: str
    cuts: int  # 1, or 2 for ushape
    relay: bool  # vanilla: the client part goes from client to client, no averaging
    labels_up: bool
    gradients_down: bool
    parallel: bool = False  # splitfed_v1: clients at once (one server copy each); else in turn
    forward_only: bool = False  # the client may ask for a body forward alone (sfprompt's scoring)


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("vanilla", 1, relay=True, labels_up=True, gradients_down=True),
        Scheme("splitfed_v1", 1, relay=False, labels_up=True, gradients_down=True, parallel=True),
        Scheme("splitfed_v2", 1, relay=False, labels_up=True, gradients_down=True),
        Scheme("ushape", 2, relay=False, labels_up=False, gradients_down=True),
        Scheme("local_loss", 1, relay=False, labels_up=True, gradients_down=False),
        # the body is frozen, so clients in parallel share it (no copies) and need no order
        Scheme("sfprompt", 2, relay=False, labels_up=False, gradients_down=True, parallel=True, forward_only=True),
    )
}


@dataclass(frozen=True, eq=False)
class SplitSetup:
    """The modules of a split experiment: what the client trains and what the server trains."""

    scheme: Scheme
    client_modules: tuple[nn.Module, ...]
    server_module: nn.Module
    activation_shape: tuple[int, ...]  # per sample, at the (first) cut
    body_shape: tuple[int, ...] | None = None  # ushape, sfprompt: per-sample body output (sent down)


def _aux_head(shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_int(seed, "split-aux"))
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), num_classes))


def make_setup(
    scheme: str,
    model: nn.Module,
    cuts: str | Sequence[str],
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    aux: nn.Module | None = None,
    bottleneck: int | None = None,
) -> SplitSetup:
    """Cut ``model`` for ``scheme``; local_loss gets ``aux`` or a linear auxiliary head;
    ``bottleneck=k`` adds a learned k-channel bottleneck at the (first) cut."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    sch = SCHEMES[scheme]
    names = (cuts,) if isinstance(cuts, str) else tuple(cuts)
    if len(names) != sch.cuts:
        raise ValueError(f"scheme {scheme} takes {sch.cuts} cut(s), got {list(names)}")
    if scheme == "sfprompt":
        if bottleneck is not None:
            raise ValueError("scheme sfprompt cuts a pre-trained model; a bottleneck does not apply")
        from fedkit.split.sfprompt import sfprompt_parts

        head, body, tail, shape, body_shape = sfprompt_parts(model, names, input_shape)
        return SplitSetup(sch, (head, tail), body, shape, body_shape)
    sm = split(model, names)
    if bottleneck is not None:
        sm = with_bottleneck(sm, input_shape, bottleneck, seed)
    with torch.no_grad():
        act = sm.parts[0](torch.zeros((2, *input_shape)))
    shape = tuple(int(s) for s in act.shape[1:])
    if scheme == "ushape":
        with torch.no_grad():
            body = sm.body(act)
        return SplitSetup(sch, (sm.head, sm.tail), sm.body, shape, tuple(int(s) for s in body.shape[1:]))
    client: tuple[nn.Module, ...] = (sm.client,)
    if scheme == "local_loss":
        client = (sm.client, aux if aux is not None else _aux_head(shape, num_classes, seed))
    return SplitSetup(sch, client, sm.server, shape)


_FEDAVG = Aggregator(weighted_mean, sgd(1.0))


def _mean(params: Params, results: list[tuple[ClientId, Params, int]]) -> Params:
    """FedAvg of the client parts: params + sample-weighted mean delta (the engine's arithmetic)."""
    ups = [Update(c, [a - g for a, g in zip(p, params, strict=True)], n) for c, p, n in results]
    return _FEDAVG.step({}, params, ups)[1]


def run_round(
    setup: SplitSetup,
    params: Params,
    server: ServerState,
    data: Mapping[ClientId, tuple[torch.Tensor, torch.Tensor]],
    round: int,
    *,
    train: TrainConfig,
    server_opt: TrainConfig,
    seed: int = 0,
    up: str = "identity",
    down: str = "identity",
    defence: Defence | None = None,
    sfprompt: SFPrompt | None = None,
) -> tuple[Params, ServerState, dict[str, float]]:
    """One in-process round over every client in ``data``: (client params, server state, metrics).

    Metrics: mean client loss, server loss, samples, and bytes by category (``bytes_*``;
    ``bytes_model_down`` / ``bytes_model_up`` are the client parts with the ``identity`` codec).
    """
    name = setup.scheme.name
    scfg = ServerConfig(name, setup.server_module, server_opt, seed, setup.activation_shape)
    ccfg = ClientConfig(name, setup.client_modules, train, seed, defence or Defence(), sfprompt)
    box = LocalServer(scfg, server_begin_round(server, round))
    clients = sorted(data)
    order = [clients[i] for i in keyed_rng(seed, "split-order", round).permutation(len(clients))]
    raw = compression.make("identity")
    model_down, model_up, counted, losses = 0, 0, ByteCount(), []
    results: list[tuple[ClientId, Params, int]] = []
    current = params
    for c in order:
        start = current if setup.scheme.relay else params
        model_down += raw.encode(None, start)[1].nbytes
        ch = LocalChannel(box.handle, c, up=up, down=down, seed=seed, round=round)
        x, y = data[c]
        new, m = train_split(ccfg, start, x, y, ch, keyed_rng(seed, "train", round, c), round=round, client=c)
        model_up += raw.encode(None, new)[1].nbytes
        counted = counted + ch.bytes
        current = _mean(start, [(c, new, len(y))]) if setup.scheme.relay else new  # relayed as a delta
        results.append((c, new, len(y)))
        losses.append(m["loss"])
    out = current if setup.scheme.relay else _mean(params, results)
    state, smetrics = server_end_round(scfg, box.state)
    metrics = {"loss": float(np.mean(losses)), **smetrics, **counted.as_metrics(),
               "bytes_model_down": float(model_down), "bytes_model_up": float(model_up)}
    return out, state, metrics


def whole(setup: SplitSetup) -> tuple[nn.Module, Callable[[Params, Params], Params]]:
    """The model the parts compose for inference (client part, server part, and ushape's tail;
    local_loss's auxiliary head is left out) and how to lay (client, server) params into it."""
    first = setup.client_modules[0]
    tail = setup.client_modules[1:] if setup.scheme.cuts == 2 else ()
    model = copy.deepcopy(nn.Sequential(first, setup.server_module, *tail))
    n_first = len(first.state_dict())
    n_client = n_first + sum(len(m.state_dict()) for m in tail)

    def join(client: Params, server: Params) -> Params:
        return [*client[:n_first], *server, *client[n_first:n_client]]

    return model, join


def initial(setup: SplitSetup) -> tuple[Params, Params]:
    """(client params, server params) as the modules were built."""
    from fedkit.models.params import get_params

    return client_params(setup.client_modules), get_params(copy.deepcopy(setup.server_module))
