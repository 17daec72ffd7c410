"""Loaders: digits, FedProx Synthetic, and the user's npz / idx files (written here in tmp_path)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedkit.data import DATASETS, Dataset, describe, load_dataset, partition
from fedkit.data.datasets import read_idx


def test_registry_and_unknown_name() -> None:
    assert {"digits", "synthetic", "npz", "idx"} <= set(DATASETS)
    with pytest.raises(ValueError, match="known: .*digits.*synthetic"):
        load_dataset("mnist-from-the-internet", 0)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_scaling_and_stratified_split() -> None:
    d = load_dataset("digits", 0)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.input_shape == (64,) and d.num_classes == 10 and d.groups is None
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    assert abs(len(d.x_test) / 1797 - 0.2) < 0.01
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.max() - counts.min() <= 2  # stratified: every class equally represented
    cnn = load_dataset("digits", 0, flat=False, test_fraction=0.5)
    assert cnn.input_shape == (1, 8, 8)
    assert abs(len(cnn.x_test) - 1797 / 2) <= 10


def test_digits_split_depends_on_seed_only() -> None:
    a, b, c = (load_dataset("digits", s) for s in (3, 3, 4))
    assert np.array_equal(a.y_train, b.y_train) and np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)


# ----------------------------------------------------------------------------- synthetic


def _skew(d: Dataset) -> float:
    users = len(np.unique(d.groups))
    parts = partition("natural", d.y_train, users, 0, groups=d.groups)
    return describe(parts, d.y_train, d.num_classes).label_skew


def test_synthetic_shapes_sizes_and_groups() -> None:
    d = load_dataset("synthetic", 5, alpha=1, beta=1)
    assert d.input_shape == (60,) and d.num_classes == 10
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert set(np.unique(d.groups)) == set(range(30))
    train = np.bincount(d.groups)
    total = np.floor(train / 0.9 + 1)  # train = floor(0.9 n)  =>  n <= train / 0.9 + 1
    assert (train + 1 >= 45).all() and (total >= 50).all()
    assert len(d.x_train) + len(d.x_test) >= 30 * 50
    assert 0.08 < len(d.x_test) / (len(d.x_train) + len(d.x_test)) < 0.12
    assert d.y_train.max() < 10


def test_synthetic_is_reproducible_from_seed() -> None:
    a = load_dataset("synthetic", 1, alpha=0.5, beta=0.5)
    b = load_dataset("synthetic", 1, alpha=0.5, beta=0.5)
    c = load_dataset("synthetic", 2, alpha=0.5, beta=0.5)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert np.array_equal(a.groups, b.groups)
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)


def test_synthetic_max_samples_caps_each_user() -> None:
    d = load_dataset("synthetic", 0, num_users=40, max_samples=60, test_fraction=0.1)
    train = np.bincount(d.groups)  # 50 <= n_k <= 60, train = floor(0.9 n_k)
    assert train.min() >= 45 and train.max() == 54
    assert len(d.x_train) + len(d.x_test) <= 40 * 60


def test_synthetic_heterogeneity() -> None:
    het = load_dataset("synthetic", 0, alpha=1, beta=1, max_samples=2000)
    iid = load_dataset("synthetic", 0, iid=True, max_samples=2000)
    assert _skew(het) > 0.5 > 0.2 > _skew(iid)

    # beta spreads the users' input means; iid users share mean 0
    def spread(d: Dataset) -> float:
        return float(np.std([d.x_train[d.groups == k].mean() for k in range(30)]))

    assert spread(load_dataset("synthetic", 0, alpha=0, beta=1)) > 3 * spread(
        load_dataset("synthetic", 0, alpha=0, beta=0)
    )
    assert spread(iid) < 0.1


def test_synthetic_alpha_shifts_all_logits_equally() -> None:
    """Documented quirk of the FedProx generator: alpha does not change the data."""
    a = load_dataset("synthetic", 0, alpha=0, beta=1)
    b = load_dataset("synthetic", 0, alpha=1, beta=1)
    assert np.array_equal(a.x_train, b.x_train)
    assert np.mean(a.y_train == b.y_train) > 0.999


def test_synthetic_100_users_is_fast() -> None:
    import time

    t = time.perf_counter()
    d = load_dataset("synthetic", 0, alpha=1, beta=1, num_users=100)
    assert time.perf_counter() - t < 1.0
    assert len(np.unique(d.groups)) == 100


# ----------------------------------------------------------------------------- npz


def _arrays(n: int = 40) -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)  # test fixture data only
    return {
        "x_train": g.normal(size=(n, 3, 2)),
        "y_train": np.arange(n) % 4,
        "x_test": g.normal(size=(10, 3, 2)),
        "y_test": np.arange(10) % 4,
        "groups": np.arange(n) // 10,
    }


def test_npz_round_trip(tmp_path: Path) -> None:
    arrs = _arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, **arrs)
    d = load_dataset("npz", 0, path=str(path))
    assert d.x_train.dtype == np.float32 and d.input_shape == (3, 2)
    np.testing.assert_allclose(d.x_train, arrs["x_train"].astype(np.float32))
    assert np.array_equal(d.y_test, arrs["y_test"]) and d.num_classes == 4
    assert np.array_equal(d.groups, arrs["groups"])
    assert load_dataset("npz", 0, path=path, num_classes=7).num_classes == 7


def test_npz_x_y_layout_is_split_by_seed(tmp_path: Path) -> None:
    path = tmp_path / "xy.npz"
    x = np.arange(200, dtype=np.float64).reshape(100, 2)
    np.savez(path, x=x, y=(np.arange(100) % 5).astype(np.float64), groups=np.arange(100) % 3)
    d = load_dataset("npz", 1, path=path, test_fraction=0.3)
    assert (len(d.x_train), len(d.x_test)) == (70, 30)
    seen = np.sort(np.concatenate([d.x_train[:, 0], d.x_test[:, 0]]))
    assert np.array_equal(seen, x[:, 0])  # every row used once
    assert np.array_equal(d.groups, (d.x_train[:, 0] // 2).astype(np.int64) % 3)
    assert np.array_equal(load_dataset("npz", 1, path=path, test_fraction=0.3).y_test, d.y_test)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.pop("y_train"), "missing key 'y_train'"),
        (lambda a: a.pop("y_test"), "missing key 'y_test'"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "has 40 samples but 'y_train' has 39"),
        (lambda a: a.update(x_test=a["x_test"][:, :2]), "'x_test' samples have shape"),
        (lambda a: a["x_train"].__setitem__((3, 0, 0), np.nan), "NaN or Inf.*sample 3"),
        (lambda a: a["x_test"].__setitem__((1, 1, 1), np.inf), "x_test.*NaN or Inf"),
        (lambda a: a.update(y_train=a["y_train"] + 0.5), "labels must be integers"),
        (lambda a: a.update(y_train=a["y_train"].astype(str)), "labels must be integers"),
        (lambda a: a.update(y_test=a["y_test"] - 1), "labels must be >= 0, found -1"),
        (lambda a: a.update(groups=a["groups"][:5]), "'groups' has 5 entries"),
        (lambda a: a.update(x=a["x_train"]), "both 'x_train' and 'x'"),
    ],
)
def test_npz_rejects_bad_files(tmp_path: Path, change: Callable, message: str) -> None:
    arrs = _arrays()
    change(arrs)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrs)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("npz", 0, path=path)
    assert "bad.npz" in str(err.value)


def test_npz_rejects_non_archives_and_missing_files(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match="plain.npy.*not an .npz"):
        load_dataset("npz", 0, path=tmp_path / "plain.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_dataset("npz", 0, path=tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_dataset("npz", 0, path=tmp_path / "nowhere.npz")
    with pytest.raises(ValueError, match="num_classes=2 but a label is 3"):
        np.savez(tmp_path / "ok.npz", **_arrays())
        load_dataset("npz", 0, path=tmp_path / "ok.npz", num_classes=2)


# ----------------------------------------------------------------------------- idx


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    dt = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(dt).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    g = np.random.default_rng(1)  # test fixture data only
    img = g.integers(0, 256, (12, 4, 5), dtype=np.uint8)
    lab = np.arange(12, dtype=np.uint8) % 3
    timg = g.integers(0, 256, (6, 4, 5), dtype=np.uint8)
    tlab = np.arange(6, dtype=np.uint8) % 3
    ext = ".gz" if compress else ""
    paths = {
        "train_images": _write_idx(tmp_path / f"tr-img{ext}", img, compress=compress),
        "train_labels": _write_idx(tmp_path / f"tr-lab{ext}", lab, compress=compress),
        "test_images": _write_idx(tmp_path / f"te-img{ext}", timg, compress=compress),
        "test_labels": _write_idx(tmp_path / f"te-lab{ext}", tlab, compress=compress),
    }
    d = load_dataset("idx", 0, **paths)
    assert d.input_shape == (20,) and d.num_classes == 3
    np.testing.assert_allclose(d.x_train, img.reshape(12, -1) / 255.0, rtol=1e-6)
    assert np.array_equal(d.y_test, tlab)
    cnn = load_dataset("idx", 0, flat=False, **paths)
    assert cnn.input_shape == (1, 4, 5)
    split = load_dataset(
        "idx",
        0,
        train_images=paths["train_images"],
        train_labels=paths["train_labels"],
        test_fraction=0.25,
    )
    assert (len(split.x_train), len(split.x_test)) == (9, 3)


def test_read_idx_other_dtypes(tmp_path: Path) -> None:
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "a", a, 0x0B)), a)
    f = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(read_idx(_write_idx(tmp_path / "f", f, 0x0D)), f)


def test_idx_rejects_bad_files(tmp_path: Path) -> None:
    img = _write_idx(tmp_path / "img", np.zeros((4, 2, 2), np.uint8))
    lab = _write_idx(tmp_path / "lab", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="4 images but .*3 labels"):
        load_dataset("idx", 0, train_images=img, train_labels=lab)
    (tmp_path / "short").write_bytes(img.read_bytes()[:-1])
    with pytest.raises(ValueError, match="short: header says shape"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"\x08\x03hello")
    with pytest.raises(ValueError, match="junk: not an idx file"):
        read_idx(tmp_path / "junk")
    with pytest.raises(ValueError, match="both test_images and test_labels"):
        load_dataset("idx", 0, train_images=img, train_labels=img, test_images=img)
