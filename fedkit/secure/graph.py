"""The sparse communication graph of SecAgg+: a randomly relabelled Harary graph H(k, n).

Reference: Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020, section 3 (random k-regular Harary graphs).

Clients sit on a ring in a seeded random order; each is joined to the k/2 nearest on either
side (plus the opposite one when k is odd). Masks and secret shares exist only along edges, so
a client's cost is O(k) instead of O(n). k = n - 1 is the complete graph of Bonawitz et al.

Choice of k and t (``degree_for`` / ``threshold_for``):
- k = min(n - 1, 2 ceil(2 log2 n)): logarithmic, as the paper asks (9, 24, 28, 32 for n = 10,
  50, 100, 200). It is a heuristic default, not the paper's security table (which picks k for
  a stated corrupt and dropout fraction at 2^-40 failure); set ``degree`` for such a guarantee.
- t = floor(k / 2) + 1, a strict majority of the neighbours: t - 1 colluding neighbours learn
  nothing of a client's secrets; a server that lies about who dropped cannot obtain both secrets
  of one client from honest neighbours (Bonawitz's 2t > n condition, per neighbourhood); and
  each client's secrets survive as long as at most k - t of its neighbours drop out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def degree_for(n: int) -> int:
    """Default number of neighbours for ``n`` clients (see the module docstring)."""
    if n < 2:
        raise ValueError(f"secagg graph: need at least 2 clients, got {n}")
    return min(n - 1, 2 * math.ceil(2 * math.log2(n)))


def threshold_for(k: int) -> int:
    """Default Shamir threshold for ``k`` neighbours: a strict majority."""
    if k < 1:
        raise ValueError(f"secagg graph: degree must be >= 1, got {k}")
    return k // 2 + 1


def harary(
    clients: Sequence[str], k: int, rng: np.random.Generator,
) -> Mapping[str, tuple[str, ...]]:
    """Neighbours of each client (sorted) in a random k-regular Harary graph.

    When k and n are both odd no k-regular graph exists; k + 1 is used (still <= n - 1).
    """
    n = len(clients)
    if len(set(clients)) != n:
        raise ValueError("secagg graph: client names must be distinct")
    if not 1 <= k <= n - 1:
        raise ValueError(f"secagg graph: degree k={k} must be in 1..{n - 1} for {n} clients")
    if k % 2 and n % 2:
        k += 1
    order = [clients[i] for i in rng.permutation(n)]
    offsets = set(range(1, k // 2 + 1))
    if k % 2:
        offsets.add(n // 2)
    out: dict[str, set[str]] = {c: set() for c in clients}
    for i, c in enumerate(order):
        for o in offsets:
            for j in (i + o, i - o):
                out[c].add(order[j % n])
    return {c: tuple(sorted(v)) for c, v in out.items()}
