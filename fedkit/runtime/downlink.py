"""What the server sends down: the global model through the downlink codec, either whole
("full") or as a compressed delta against the model each client already holds ("delta").

Delta mode keeps a reference model x_ref that every up-to-date client reconstructs exactly:
each round the server encodes d = x - x_ref, and both sides set x_ref <- x_ref + decode(d).
What the codec dropped stays in x - x_ref and is sent later (error feedback on the server, as
in DoubleSqueeze, Tang et al., ICML 2019). Clients train from x_ref. A client whose copy is
older than the last round (it sat a round out, or restarted) is sent x_ref whole, so delta mode
pays off when the same clients take part round after round (cross-silo, full participation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkit import rng as frng
from fedkit.compression import decode, make
from fedkit.runtime.task import DownlinkRef
from fedkit.types import ClientId, Encoded, Params

MODES = ("full", "delta")

_codec = functools.lru_cache(maxsize=64)(make)  # codecs are values: parse each spec once


@dataclass(frozen=True)
class DownlinkState:
    version: int = 0  # round whose reference the up-to-date clients hold (0: none yet)
    ref: Params | None = None
    holders: Mapping[ClientId, int] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Checkpoint form. Holders are left out on purpose: after a server restart nobody
        knows what the clients still hold, so each gets the reference whole once (the same
        model either way, so a resumed run ends with the same parameters)."""
        out: dict[str, np.ndarray] = {"version": np.array(self.version)}
        if self.ref is not None:
            out |= {f"ref/{i}": a for i, a in enumerate(self.ref)}
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> DownlinkState:
        if "version" not in arrays:
            return cls()
        refs = sorted((int(k[4:]), v) for k, v in arrays.items() if k.startswith("ref/"))
        return cls(int(arrays["version"]), [np.array(v) for _, v in refs] or None)


@dataclass(frozen=True)
class Outgoing:
    """Per-client payloads and the config each needs to rebuild the model it trains from."""

    state: DownlinkState
    payloads: dict[ClientId, Encoded]
    configs: dict[ClientId, DownlinkRef]


def prepare(
    mode: str,
    codec_spec: str,
    state: DownlinkState,
    params: Params,
    clients: Sequence[ClientId],
    rnd: int,
    seed: int,
) -> Outgoing:
    gen = frng.lazy(seed, "downlink", rnd)
    codec = _codec(codec_spec)
    if mode == "full":
        _, enc = codec.encode(codec.init(params), params, gen)
        return Outgoing(state, {c: enc for c in clients}, {c: DownlinkRef() for c in clients})
    if mode != "delta":
        raise ValueError(f"unknown downlink mode {mode!r}; known: {', '.join(MODES)}")
    full_codec = make("identity")
    if state.ref is None:
        ref, delta = [np.array(p) for p in params], None
    else:
        d = [p - r for p, r in zip(params, state.ref, strict=True)]
        _, delta = codec.encode(codec.init(d), d, gen)
        ref = apply_delta(state.ref, delta)
    full = full_codec.encode(None, ref)[1]
    payloads, configs = {}, {}
    for c in clients:
        if delta is not None and state.holders.get(c) == state.version:
            payloads[c] = delta
            configs[c] = DownlinkRef(mode="delta", base=state.version, version=rnd)
        else:
            payloads[c] = full
            configs[c] = DownlinkRef(mode="full", version=rnd)
    holders = dict(state.holders) | {c: rnd for c in clients}
    return Outgoing(DownlinkState(rnd, ref, holders), payloads, configs)


PerClient = Callable[[Params, Any, Sequence[ClientId]], Mapping[ClientId, Params]]
"""``fn(params, agg_state, clients) -> {client: what it is sent}`` where that is not the global
model itself (LoRA variants: an adapter at the client's rank, the base change after it). Clients
sent the same list object share one encoded payload."""

SERVER: ClientId = "(server)"
"""The name a :data:`PerClient` is asked for the server's own view (central evaluation)."""


def prepare_each(mode: str, codec_spec: str, state: DownlinkState, each: Mapping[ClientId, Params],
                 rnd: int, seed: int) -> Outgoing:
    """As :func:`prepare` in ``full`` mode, for clients sent different params (each distinct
    list encoded once, in client order); a delta against one reference does not apply."""
    if mode != "full":
        raise ValueError(f"downlink mode {mode!r} needs one model for every client; per-client "
                         "downlinks (LoRA ranks, base changes) use mode full")
    gen = frng.lazy(seed, "downlink", rnd)
    codec = _codec(codec_spec)
    done: dict[int, Encoded] = {}
    payloads = {}
    for c, params in each.items():
        if id(params) not in done:
            done[id(params)] = codec.encode(codec.init(params), params, gen)[1]
        payloads[c] = done[id(params)]
    return Outgoing(state, payloads, {c: DownlinkRef() for c in each})


def forget(state: DownlinkState, client: ClientId) -> DownlinkState:
    """The client does not hold the reference we thought (it failed or restarted)."""
    return DownlinkState(state.version, state.ref, {k: v for k, v in state.holders.items() if k != client})


def apply_delta(ref: Params, enc: Encoded) -> Params:
    d = decode(enc)
    return [(r + x).astype(r.dtype, copy=False) for r, x in zip(ref, d, strict=True)]


def receive(
    cfg: DownlinkRef, payload: Encoded, held: tuple[int, Params] | None
) -> tuple[Params, tuple[int, Params] | None]:
    """Client side: the params to start from, and the reference to keep for next time."""
    if cfg.mode == "full":
        params = decode(payload)
        return params, (cfg.version, params) if cfg.version is not None else held
    if cfg.base is None or cfg.version is None:
        raise ValueError("downlink delta needs 'base' and 'version'")
    base = cfg.base
    if held is None or held[0] != base:
        have = "none" if held is None else f"round {held[0]}"
        raise ValueError(f"downlink delta needs the model of round {base}; this client has {have}")
    params = apply_delta(held[1], payload)
    return params, (cfg.version, params)
