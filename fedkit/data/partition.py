"""Partitioners: labels -> one index array per client, a disjoint cover of ``range(n)``.

References:
- ``iid``, ``shards``: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data" (AISTATS 2017, arXiv:1602.05629): sort by label, 2 shards per client.
- ``dirichlet``: Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study"
  (NIID-Bench, ICDE 2022, arXiv:2102.02079), ``partition_data`` with its balance trick.
- ``quantity``: quantity skew as in NIID-Bench, with LogNormal(0, sigma) sizes instead of Dir.
- ``natural``: the data's own users (FedProx Synthetic, LEAF-style files).

Each partitioner is ``fn(labels, num_clients, rng, **params) -> list[np.ndarray]``, registered in
``PARTITIONERS``; :func:`partition` seeds it and checks the cover.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedkit.registry import Registry
from fedkit.rng import rng as keyed_rng

__all__ = ["PARTITIONERS", "partition", "register_partitioner"]

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partition")
register_partitioner = PARTITIONERS.register
"""Add a partitioner to ``PARTITIONERS`` so scenarios can refer to it by ``name`` (decorator)."""


def partition(
    kind: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    groups: np.ndarray | None = None,
    **params: Any,
) -> list[np.ndarray]:
    """Split sample indices among ``num_clients`` clients, reproducibly from ``seed``.

    ``groups`` (per-sample user ids) is used by ``natural`` only and ignored by other kinds, so
    callers may always pass ``dataset.groups``. The result is verified to be a disjoint cover.

    >>> [p.tolist() for p in partition("iid", np.zeros(5, dtype=int), 2, seed=0)]
    [[1, 2, 4], [0, 3]]
    """
    fn = PARTITIONERS[kind]
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"cannot give {num_clients} clients a sample each from {n} samples")
    labels = labels.astype(np.int64)
    if n and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    if kind == "natural":
        params["groups"] = groups
    parts = fn(labels, num_clients, keyed_rng(seed, "partition"), **params)
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    _check_cover(parts, n, num_clients, kind)
    return parts


def _check_cover(parts: list[np.ndarray], n: int, num_clients: int, kind: str) -> None:
    """Self-check: a partitioner bug must fail loudly, not silently drop or duplicate data."""
    if len(parts) != num_clients:
        raise RuntimeError(f"partitioner {kind!r} returned {len(parts)} parts for {num_clients}")
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise RuntimeError(f"partitioner {kind!r} returned an index outside range({n})")
    counts = np.bincount(flat, minlength=n)
    if (counts == 0).any():
        raise RuntimeError(f"partitioner {kind!r} left sample {int(np.argmin(counts))} unassigned")
    if (counts > 1).any():
        raise RuntimeError(f"partitioner {kind!r} assigned sample {int(np.argmax(counts))} twice")


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total``, proportional to ``weights`` (Hamilton's method)."""
    w = np.asarray(weights, dtype=np.float64)
    if total == 0:
        return np.zeros(len(w), np.int64)
    if w.sum() <= 0:
        w = np.ones(len(w))
    quota = w / w.sum() * total
    out = np.floor(quota).astype(np.int64)
    short = total - int(out.sum())
    out[np.argsort(-(quota - out), kind="stable")[:short]] += 1
    return out


def _split_sizes(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return [np.sort(p) for p in np.split(order, np.cumsum(sizes)[:-1])]


def matched_test(y_train: np.ndarray, parts: list[np.ndarray], y_test: np.ndarray,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """Each client's slice of the test set with its own label mix, for personalised evaluation
    (FedSA-LoRA's personal B is judged on data like the client's, not on a uniform slice): each
    class's test samples are dealt out in proportion to the clients' counts of that class in
    training (a class no client trains on: evenly). The slices still cover the test set once,
    so the example-weighted federated accuracy of one global model is its test accuracy."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if y_train.ndim != 1 or y_test.ndim != 1 or not np.issubdtype(y_test.dtype, np.integer):
        raise ValueError("evaluation.federated_test: matched needs class labels (one integer per sample)")
    classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    counts = np.stack([np.bincount(y_train[p], minlength=classes) for p in parts])
    out: list[list[np.ndarray]] = [[] for _ in parts]
    for k in range(classes):
        idx = rng.permutation(np.flatnonzero(y_test == k))
        for c, piece in enumerate(np.split(idx, np.cumsum(_largest_remainder(counts[:, k], len(idx)))[:-1])):
            out[c].append(piece)
    return [np.sort(np.concatenate(o)) for o in out]


# ----------------------------------------------------------------------------- partitioners


@register_partitioner("iid")
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and split evenly: the homogeneous baseline every non-IID run is compared with."""
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


@register_partitioner("dirichlet")
def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.5,
    min_size: int = 2,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label skew: each class is spread over clients by p ~ Dir(alpha); small alpha = skewed.

    Balance trick (NIID-Bench): a client already holding >= n/num_clients samples gets no more,
    which keeps sizes from exploding. The whole draw repeats until every client has ``min_size``.
    """
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    n = len(labels)
    if min_size * num_clients > n:
        raise ValueError(
            f"dirichlet: {num_clients} clients x min_size={min_size} exceeds {n} samples"
        )
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    smallest = 0
    for _ in range(max_tries):
        sizes = np.zeros(num_clients, np.int64)
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = np.nan_to_num(p) * (sizes < n / num_clients)
            if p.sum() <= 0:  # tiny alpha can underflow every open client's share to 0
                p = (sizes < n / num_clients).astype(np.float64)
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(np.int64)[:-1]
            for j, piece in enumerate(np.split(idx, cuts)):
                chunks[j].append(piece)
                sizes[j] += len(piece)
        smallest = int(sizes.min())
        if smallest >= min_size:
            return [np.sort(np.concatenate(c)) for c in chunks]
    raise ValueError(
        f"dirichlet: after {max_tries} draws some client still had {smallest} < "
        f"min_size={min_size} samples; use a larger alpha or a smaller min_size"
    )


@register_partitioner("shards")
def shards(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Pathological label skew: clients get ``shards_per_client`` random label-sorted shards.

    Unlike McMahan's equal contiguous shards, each shard holds a single label whenever there
    are at least as many shards as classes (shard counts per class are proportional to class
    size), so a client sees at most ``shards_per_client`` labels. With fewer shards than
    classes it falls back to equal contiguous shards of the label-sorted order.
    """
    num_shards = num_clients * shards_per_client
    n = len(labels)
    if shards_per_client < 1 or num_shards > n:
        raise ValueError(
            f"shards: need 1 <= {num_clients} clients x {shards_per_client} shards <= {n} samples"
        )
    classes, counts = np.unique(labels, return_counts=True)
    pieces: list[np.ndarray] = []
    if num_shards >= len(classes):
        per_class = 1 + _largest_remainder(counts - 1, num_shards - len(classes))
        per_class = np.minimum(per_class, counts)  # only float round-off could exceed a count
        per_class[np.argmax(counts - per_class)] += num_shards - int(per_class.sum())
        for c, k in zip(classes, per_class, strict=True):
            pieces.extend(np.array_split(rng.permutation(np.flatnonzero(labels == c)), k))
    else:
        pieces = np.array_split(np.argsort(labels, kind="stable"), num_shards)
    order = rng.permutation(num_shards)
    return [
        np.sort(np.concatenate([pieces[s] for s in order[i::num_clients]]))
        for i in range(num_clients)
    ]


@register_partitioner("quantity")
def quantity(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    sigma: float = 1.0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Quantity skew: sizes ~ LogNormal(0, sigma) scaled to n, samples assigned i.i.d.

    Isolates unequal data volume (and so unequal weights and compute time) from label skew.
    """
    n = len(labels)
    if min_size * num_clients > n:
        raise ValueError(f"quantity: {num_clients} clients x min_size={min_size} exceeds {n}")
    weights = rng.lognormal(0.0, sigma, num_clients)
    sizes = min_size + _largest_remainder(weights, n - min_size * num_clients)
    return _split_sizes(rng.permutation(n), sizes)


@register_partitioner("natural")
def natural(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The data's own users: client i gets the samples of the i-th group id in sorted order."""
    if groups is None:
        raise ValueError("natural partition needs per-sample groups; this dataset has none")
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"natural: groups has shape {groups.shape}, labels {labels.shape}")
    ids, counts = np.unique(groups, return_counts=True)
    if len(ids) != num_clients:
        raise ValueError(
            f"natural partition: the data has {len(ids)} groups but num_clients={num_clients}; "
            f"set num_clients to {len(ids)}"
        )
    return _split_sizes(np.argsort(groups, kind="stable"), counts)
