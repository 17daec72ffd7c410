"""Simulated attackers in the round engine (the attacks themselves are in fedkit/attacks.py).

Where each kind of attack runs, and why:

- **update attacks a client can mount alone** (sign flip, scaling / model replacement,
  Gaussian noise) are client mods (:func:`attack_mod`), installed only on the malicious
  clients' hosts, just outside DP clipping and inside the uplink encoder: the attacker's own
  software skips clipping and sends whatever it likes, through the same codec and link as an
  honest client, so compression and byte counts apply to it too;
- **"a little is enough"** (Baruch et al. 2019) needs the mean and spread of the *benign*
  updates of the round, which colluding attackers are assumed to know; no single client can
  compute that, so it is simulated at the server's door by :class:`Colluding`, an aggregator
  wrapper that replaces the malicious clients' decoded updates before the real aggregator (DP
  or robust) sees them. The attackers still train honestly; their reply is then overwritten;
- **label flip** is data poisoning, applied to the malicious clients' labels when their data is
  built (fedkit/scenario/build.py), so it runs in every mode.

Which clients are malicious is fixed for the run by ``assign_malicious(names, fractions,
seed)`` (disjoint sets, one per attack entry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedkit.attacks import Attack
from fedkit.types import ClientId, Params, Update

if TYPE_CHECKING:
    from fedkit.runtime.client import ClientFn, ClientState, Context, Mod
    from fedkit.types import Reply, Task


def attack_mod(attack: Attack) -> Mod:
    """A client mod that replaces this client's raw delta by ``attack`` of it.

    The attack sees the one update (``attack([u], {client}, seed=, round=)``), so it must be
    one a client can mount alone; keyed draws use the task's seed, round and client.
    """

    def mod(state: ClientState, task: Task, ctx: Context, inner: ClientFn) -> tuple[ClientState, Reply]:
        state, reply = inner(state, task, ctx)
        if reply.delta is None:
            return state, reply
        mine = Update(task.client, reply.delta, reply.num_examples, reply.metrics, task.version)
        (bad,) = attack([mine], {task.client}, seed=ctx.config.seed, round=task.round)
        return state, dataclasses.replace(reply, delta=bad.delta)

    return mod


@dataclass(frozen=True)
class Colluding:
    """An aggregator seen through colluding attackers: ``attack`` rewrites the ``malicious``
    clients' updates of each round (knowing everyone's), then ``inner`` aggregates.

    State is the inner aggregator's, untouched. Draws are keyed by the round, taken as the
    model version the updates trained on plus one (the synchronous round).
    """

    inner: Any
    attack: Attack
    malicious: frozenset[ClientId]
    seed: int

    def init(self, params: Params) -> Any:
        return self.inner.init(params)

    def step(self, state: Any, params: Params, updates: Sequence[Update]) -> tuple[Any, Params]:
        rnd = max((u.version for u in updates), default=0) + 1
        attacked = self.attack(list(updates), self.malicious, seed=self.seed, round=rnd)
        return self.inner.step(state, params, attacked)
