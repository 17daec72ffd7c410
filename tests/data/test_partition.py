"""Partitioners: exact disjoint covers, seeded reproducibility, and the skew each one promises."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

from fedkit.data import PARTITIONERS, describe, partition
from fedkit.registry import Registry
from fedkit.rng import rng


def _labels(n: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return rng(seed, "test-labels").integers(0, num_classes, n)


def _groups(n: int, k: int) -> np.ndarray:
    g = np.repeat(np.arange(k), -(-n // k))[:n]
    return rng(1, "test-groups").permutation(g) * 7 + 3  # arbitrary, non-contiguous ids


CASES = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.1}),
    ("dirichlet", {"alpha": 10.0}),
    ("shards", {}),
    ("shards", {"shards_per_client": 3}),
    ("quantity", {}),
    ("quantity", {"sigma": 2.0, "min_size": 3}),
    ("natural", {}),
]


def test_cases_cover_every_registered_kind() -> None:
    assert {k for k, _ in CASES} == set(PARTITIONERS)


@pytest.mark.parametrize("kind,params", CASES)
@pytest.mark.parametrize("n,clients", [(200, 5), (1000, 20), (997, 13)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_disjoint_exact_cover(kind: str, params: dict, n: int, clients: int, seed: int) -> None:
    labels = _labels(n, seed=seed)
    parts = partition(kind, labels, clients, seed, groups=_groups(n, clients), **params)
    assert len(parts) == clients
    assert all(p.dtype == np.int64 for p in parts)
    flat = np.concatenate(parts)
    assert np.array_equal(np.sort(flat), np.arange(n))


@pytest.mark.parametrize("kind,params", CASES)
def test_same_seed_same_partition_different_seed_differs(kind: str, params: dict) -> None:
    labels = _labels(500)
    groups = _groups(500, 10)
    a = partition(kind, labels, 10, 7, groups=groups, **params)
    b = partition(kind, labels, 10, 7, groups=groups, **params)
    c = partition(kind, labels, 10, 8, groups=groups, **params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    same = all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert same == (kind == "natural")  # natural is fixed by the data, not the seed


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    labels = _labels(2000)
    skew = {
        a: np.mean(
            [
                describe(partition("dirichlet", labels, 10, s, alpha=a), labels, 10).label_skew
                for s in range(3)
            ]
        )
        for a in (0.1, 1.0, 100.0)
    }
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[100.0] < 0.1 < 0.4 < skew[0.1]


def test_dirichlet_respects_min_size_and_fails_clearly() -> None:
    labels = _labels(300)
    parts = partition("dirichlet", labels, 10, 0, alpha=0.1, min_size=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ValueError, match="larger alpha or a smaller min_size"):
        partition("dirichlet", labels, 10, 0, alpha=0.001, min_size=29, max_tries=5)
    with pytest.raises(ValueError, match="exceeds 300 samples"):
        partition("dirichlet", labels, 10, 0, min_size=31)


@pytest.mark.parametrize("spc", [1, 2, 3])
def test_shards_limit_labels_per_client(spc: int) -> None:
    labels = _labels(1000)
    parts = partition("shards", labels, 10, 0, shards_per_client=spc)
    stats = describe(parts, labels, 10)
    assert stats.labels_per_client.max() <= spc
    assert stats.size_max - stats.size_min <= 0.5 * stats.size_mean  # shards are near-equal


def test_quantity_sizes_vary_labels_do_not() -> None:
    labels = _labels(2000)
    stats = describe(partition("quantity", labels, 10, 0, sigma=1.0, min_size=5), labels, 10)
    assert stats.size_min >= 5
    assert stats.size_max > 2 * stats.size_min
    iid = describe(partition("iid", labels, 10, 0), labels, 10)
    assert iid.size_max - iid.size_min <= 1


def test_natural_matches_groups() -> None:
    labels = _labels(300)
    groups = _groups(300, 6)
    parts = partition("natural", labels, 6, 0, groups=groups)
    for gid, p in zip(np.unique(groups), parts, strict=True):
        assert np.array_equal(p, np.flatnonzero(groups == gid))


def test_natural_errors() -> None:
    labels = _labels(300)
    with pytest.raises(ValueError, match="has 6 groups but num_clients=5"):
        partition("natural", labels, 5, 0, groups=_groups(300, 6))
    with pytest.raises(ValueError, match="needs per-sample groups"):
        partition("natural", labels, 5, 0)


def test_entry_point_errors() -> None:
    labels = _labels(20)
    with pytest.raises(ValueError, match="known: dirichlet, iid, natural, quantity, shards"):
        partition("nope", labels, 2, 0)
    with pytest.raises(ValueError, match="21 clients"):
        partition("iid", labels, 21, 0)
    with pytest.raises(ValueError, match="shards"):
        partition("shards", labels, 11, 0)


def test_cover_check_catches_a_broken_partitioner(monkeypatch: pytest.MonkeyPatch) -> None:
    broken: Registry[Any] = Registry("partition")
    broken.register("short")(lambda labels, k, rng: [np.arange(len(labels) - 1)])
    broken.register("double")(lambda labels, k, rng: [np.arange(5), np.arange(5)])
    module = importlib.import_module("fedkit.data.partition")  # the package re-exports a function
    monkeypatch.setattr(module, "PARTITIONERS", broken)
    with pytest.raises(RuntimeError, match="unassigned"):
        partition("short", _labels(10), 1, 0)
    with pytest.raises(RuntimeError, match="twice"):
        partition("double", _labels(5), 2, 0)


def test_matched_test_slices_follow_each_clients_label_mix_and_cover_the_test_set() -> None:
    from fedkit.data.partition import matched_test

    y_train = np.array([0] * 30 + [1] * 10 + [2] * 0)
    parts = [np.arange(0, 30), np.arange(30, 40)]  # client 0 holds only 0s, client 1 only 1s
    y_test = np.array([0] * 6 + [1] * 4 + [2] * 2)
    out = matched_test(y_train, parts, y_test, np.random.default_rng(0))
    assert sorted(y_test[out[0]].tolist()) == [0] * 6 + [2]  # its own class, and half of the class nobody has
    assert sorted(y_test[out[1]].tolist()) == [1] * 4 + [2]
    assert np.array_equal(np.sort(np.concatenate(out)), np.arange(len(y_test)))  # each test sample once
    with pytest.raises(ValueError, match="matched needs class labels"):
        matched_test(y_train, parts, np.zeros((12, 3), np.int64), np.random.default_rng(0))
