"""Reference driver: one SecAgg+ round with every client in this process, messages as bytes.

Reference: Bell et al., CCS 2020 (the protocol is in ``fedkit.secure.secagg``).

It is the shape the engine's driver takes over ``send``/``arrivals``: for each stage, ask each
live client, pass its bytes through ``decode_message``, ``receive`` them, then ``close_*`` and
deliver the server's per-client bytes. ``drop[stage]`` names clients that vanish at that stage
before sending anything; ``tamper(stage, sender, receiver, data)`` may rewrite any message in
flight (tests of authentication). Bytes per client and time per party are counted, so the same
loop serves the tests and ``benchmarks/bench_secagg.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.secure import secagg as sa

Tamper = Callable[[str, str, str, bytes], bytes]
"""(stage, sender, receiver, data) -> data; "server" names the server."""


@dataclass(frozen=True)
class LocalRun:
    aggregate: sa.Aggregate
    up_bytes: Mapping[str, int]       # client -> bytes sent, all stages
    down_bytes: Mapping[str, int]     # client -> bytes received, all stages
    client_s: Mapping[str, float]     # client -> seconds in its protocol functions
    server_s: float                   # seconds in receive / close_*
    server_states: tuple[sa.ServerState, ...]  # after every step, when keep_states


def run_local(
    config: sa.SecAggConfig,
    round: int,
    inputs: Mapping[str, np.ndarray],
    secrets: Mapping[str, bytes] | None = None,
    *,
    drop: Mapping[str, Collection[str]] | None = None,
    tamper: Tamper | None = None,
    keep_states: bool = False,
    secret_seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> LocalRun:
    """Run all four stages; raises ``SecAggAbort`` when dropouts exceed the threshold.

    ``clock`` times each party (``time.process_time`` is steadier on a loaded machine).
    """
    drop = drop or {}
    unknown = set(drop) - set(sa.STAGES)
    if unknown:
        raise ValueError(f"secagg: unknown stage(s) in drop: {sorted(unknown)}")
    names = sorted(inputs)
    secrets = secrets or {c: sa.sim_secret(secret_seed, round, c) for c in names}
    up = dict.fromkeys(names, 0)
    down = dict.fromkeys(names, 0)
    cpu = dict.fromkeys(names, 0.0)
    server_s = 0.0
    history: list[sa.ServerState] = []
    server = sa.server_init(config, round, names)
    clients: dict[str, sa.ClientState] = {}
    inbox: dict[str, bytes] = {}

    def keep(state: sa.ServerState) -> sa.ServerState:
        if keep_states:
            history.append(state)
        return state

    alive = list(names)
    out: Any = None
    for stage, close in zip(sa.STAGES, _CLOSERS, strict=True):
        alive = [c for c in alive if c not in set(drop.get(stage, ()))]
        sent: list[tuple[str, bytes]] = []
        for c in alive:
            t0 = clock()
            if stage == sa.STAGES[0]:
                clients[c], msg = sa.advertise(config, round, c, secrets[c])
            else:
                got = sa.decode_message(inbox[c])
                clients[c], msg = _CLIENT_STEP[stage](clients[c], got, inputs[c])
            data = sa.encode_message(msg)
            cpu[c] += clock() - t0
            if tamper is not None:
                data = tamper(stage, c, "server", data)
            up[c] += len(data)
            sent.append((c, data))
        t0 = clock()
        for _, data in sent:
            server = keep(sa.receive(server, sa.decode_message(data)))
        server, out = close(server)
        keep(server)
        if stage == sa.STAGES[-1]:
            server_s += clock() - t0
            break
        inbox = {c: sa.encode_message(m) for c, m in out.items()}
        server_s += clock() - t0
        if tamper is not None:
            inbox = {c: tamper(stage, "server", c, d) for c, d in inbox.items()}
        alive = [c for c in alive if c in inbox]
        for c in alive:
            down[c] += len(inbox[c])
    return LocalRun(out, up, down, cpu, server_s, tuple(history))


_CLIENT_STEP: dict[str, Callable] = {
    sa.STAGES[1]: lambda st, msg, x: sa.share_keys(st, msg),
    sa.STAGES[2]: lambda st, msg, x: sa.masked_input(st, msg, x),
    sa.STAGES[3]: lambda st, msg, x: sa.unmask(st, msg),
}
_CLOSERS = (sa.close_advertise, sa.close_share_keys, sa.close_masked_input, sa.close_unmask)
