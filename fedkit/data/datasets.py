"""Datasets that work offline: bundled digits, FedProx Synthetic(alpha, beta), and the user's files.

Every loader is ``fn(seed, **params) -> Dataset`` and is registered by name in ``DATASETS`` so a
scenario file can name it. Loaders never download: digits ships with scikit-learn, Synthetic is
generated, and ``npz`` / ``idx`` read files the user already has.

Synthetic(alpha, beta) follows Li et al., "Federated Optimization in Heterogeneous Networks"
(FedProx, MLSys 2020, arXiv:1812.06127), exactly as its generator
``litian96/FedProx:data/synthetic_1_1/generate_synthetic.py`` does, with d = ``dim`` = 60 and
C = ``num_classes`` = 10. For each user k (all draws from ``rng(seed, "synthetic", k)``)::

    n_k = floor(LogNormal(mean=4, sigma=2)) + 50          (then min(n_k, max_samples) if set)
    u_k ~ N(0, alpha)        B_k ~ N(0, beta)              (second argument is a std)
    W_k ~ N(u_k, 1)^(d x C)  b_k ~ N(u_k, 1)^C             (b shares W's mean, as in the code)
    v_k ~ N(B_k, 1)^d
    x   ~ N(v_k, Sigma),     Sigma = diag(j^-1.2), j = 1..d
    y   = argmax(softmax(x W_k + b_k)) = argmax(x W_k + b_k)

The paper's text calls alpha and beta variances, but its code passes them to numpy's ``normal``
as the *scale* (standard deviation); we follow the code. The two agree for alpha, beta in {0, 1}.
Because u_k is added to every column of W_k and every entry of b_k, it shifts all class logits
of a sample by the same amount: alpha changes the generating W_k but not the data (here, same
seed and beta -> same x, and the same y up to float round-off). Heterogeneity in the data comes from
beta (input shift) and the per-user N(0, 1) draws of W_k and v_k.
IID variant (``iid=True``, ``generate_iid.py``): one global W ~ N(0, 1)^(d x C), b ~ N(0, 1)^C from
``rng(seed, "synthetic", "global")``, and v_k = 0 for every user; alpha and beta are unused.
Each user's samples are i.i.d., so taking the first ``floor((1 - test_fraction) n_k)`` as train and
the rest as test is the same as FedProx's shuffle-then-split 90/10.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkit.registry import Registry
from fedkit.rng import rng

__all__ = ["DATASETS", "Dataset", "TextInfo", "load_dataset", "register_dataset"]


@dataclass(frozen=True)
class TextInfo:
    """What a model needs to know about token-id inputs (fedkit/data/text.py makes them).

    Inputs are int64 token ids of shape (n, max_length); ``pad_id`` marks padding, so a model
    wrapper builds the attention mask as ``x != pad_id``. For ``task == "causal-lm"`` the target
    is the input block shifted by one token and ``num_classes`` is ``vocab_size``.
    """

    task: str  # "classification" | "causal-lm"
    tokenizer: str  # "char" (fedkit.data.text.CHAR_VOCAB) or the tokenizer folder
    vocab_size: int
    pad_id: int
    max_length: int
    label_names: tuple[str, ...] = ()  # class id -> label name (classification)
    group_names: tuple[str, ...] = ()  # group id -> what the group is (module, file, topic ...)


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly
class Dataset:
    """Train and test arrays plus, when the data has them, natural per-sample user ids."""

    name: str
    x_train: np.ndarray  # float32, (n, *input_shape); int64 token ids for text
    y_train: np.ndarray  # int64, (n,); (n, max_length) next-token targets for a causal LM
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None  # int64 user id per training sample, for "natural" partitions
    text: TextInfo | None = None  # set for token-id inputs

    def __post_init__(self) -> None:
        # Catch loader bugs at construction instead of deep inside a training loop.
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"dataset {self.name!r}: features and labels differ in length")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"dataset {self.name!r}: train and test inputs differ in shape")
        if self.groups is not None and self.groups.shape != (len(self.y_train),):
            raise ValueError(f"dataset {self.name!r}: groups must have one id per train sample")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def partition_labels(self) -> np.ndarray:
        """One class per training sample for label-based partitioners and ``describe``.

        ``y_train`` itself, except for sequence targets (a causal LM), where it is the sample's
        group (document, file, topic), so Dirichlet skews topics; zeros when there are no groups.
        """
        if self.y_train.ndim == 1:
            return self.y_train
        if self.groups is not None:
            return self.groups
        return np.zeros(len(self.y_train), np.int64)

    @property
    def partition_classes(self) -> int:
        """How many classes :attr:`partition_labels` ranges over."""
        if self.y_train.ndim == 1:
            return self.num_classes
        labels = self.partition_labels
        return int(labels.max()) + 1 if labels.size else 1


Loader = Callable[..., Dataset]
DATASETS: Registry[Loader] = Registry("dataset")
register_dataset = DATASETS.register
"""Add a loader to ``DATASETS`` so scenarios can refer to it by ``name`` (decorator)."""


def load_dataset(name: str, seed: int, **params: Any) -> Dataset:
    """Load dataset ``name``; ``params`` go to its loader, ``seed`` drives every random split."""
    return DATASETS[name](seed, **params)


# ----------------------------------------------------------------------------- helpers


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def _stratified_split(
    y: np.ndarray, test_fraction: float, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with round(test_fraction * n_c) test samples per class.

    Stratified so a small test set still sees every class in its training proportion.
    """
    _check_fraction(test_fraction)
    perm = gen.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]  # grouped by class, random within class
    counts = np.bincount(y)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(y)) - starts[y[order]]
    n_test = np.round(counts * test_fraction).astype(np.int64)
    is_test = rank < n_test[y[order]]
    return np.sort(order[~is_test]), np.sort(order[is_test])


def _as_features(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: features must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{where}: features must have shape (n, ...), got shape {x.shape}")
    out = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{where}: {int(bad.sum())} feature values are NaN or Inf (as float32), "
            f"first in sample {first}"
        )
    return out


def _as_labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise ValueError(f"{where}: labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{where}: labels must be integers, found non-integer values")
    elif y.dtype.kind not in "biu":
        raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}")
    out = y.astype(np.int64)
    if out.size and out.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, found {int(out.min())}")
    return out


def _num_classes(given: int | None, where: str, *labels: np.ndarray) -> int:
    top = max((int(y.max()) for y in labels if y.size), default=-1)
    if given is None:
        return top + 1
    if given <= top:
        raise ValueError(f"{where}: num_classes={given} but a label is {top}")
    return int(given)


# ----------------------------------------------------------------------------- digits


@register_dataset("digits")
def load_digits(
    seed: int,
    *,
    test_fraction: float = 0.2,
    flat: bool = True,
    positive: list[int] | None = None,
    classes: list[int] | None = None,
) -> Dataset:
    """sklearn's bundled 8x8 digits (1,797 images), so tests and demos run offline.

    Pixels 0..16 are scaled to [0, 1]; ``flat=False`` gives (1, 8, 8) inputs for a CNN.
    ``positive`` makes it a binary task: label 1 for those digits, 0 for the rest (``[0]``: one
    positive in ten, the imbalanced setting of split learning's label-leakage attack); the
    train/test split is the 10-class one.
    ``classes`` keeps only those digits (labels unchanged, still 10 classes) in train and test,
    after the split: a source split to pre-train on (``[0, 1, 2, 3, 4]``) and a target split to
    fine-tune on (``[5, 6, 7, 8, 9]``) never share a sample.
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    if not flat:
        x = x.reshape(-1, 1, 8, 8)
    tr, te = _stratified_split(y, test_fraction, rng(seed, "digits", "split"))
    if classes is not None:
        bad = sorted(set(classes) - set(range(10)))
        if bad or not classes:
            raise ValueError(f"classes must be a non-empty list of digits 0..9, got {classes}")
        tr, te = tr[np.isin(y[tr], classes)], te[np.isin(y[te], classes)]
    if positive is None:
        return Dataset("digits", x[tr], y[tr], x[te], y[te], num_classes=10)
    pos = sorted({int(d) for d in positive})
    if not pos or pos[0] < 0 or pos[-1] > 9 or len(pos) == 10 or len(pos) != len(positive):
        raise ValueError(f"digits positive: give distinct digits 0..9, not all ten, got {positive}")
    yb = np.isin(y, pos).astype(np.int64)
    return Dataset("digits", x[tr], yb[tr], x[te], yb[te], num_classes=2)


# ----------------------------------------------------------------------------- synthetic


@register_dataset("synthetic")
def load_synthetic(
    seed: int,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_users: int = 30,
    dim: int = 60,
    num_classes: int = 10,
    iid: bool = False,
    test_fraction: float = 0.1,
    max_samples: int | None = None,
) -> Dataset:
    """FedProx Synthetic(alpha, beta); formulas in the module docstring.

    alpha controls how much the users' models differ, beta how much their inputs differ.
    ``max_samples`` caps n_k because LogNormal(4, 2) occasionally yields tens of thousands.
    """
    _check_fraction(test_fraction)
    if num_users < 1 or dim < 1 or num_classes < 2:
        raise ValueError("synthetic needs num_users >= 1, dim >= 1 and num_classes >= 2")
    if max_samples is not None and max_samples < 2:
        raise ValueError(f"synthetic: max_samples must be >= 2, got {max_samples}")
    std_x = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma's diagonal j^-1.2
    if iid:
        g = rng(seed, "synthetic", "global")
        w_global = g.standard_normal((dim, num_classes))
        b_global = g.standard_normal(num_classes)
    xs_tr, ys_tr, gs, xs_te, ys_te = [], [], [], [], []
    for k in range(num_users):
        g = rng(seed, "synthetic", k)
        n = int(math.floor(g.lognormal(4.0, 2.0))) + 50
        if max_samples is not None:
            n = min(n, max_samples)
        if iid:
            w, b, v = w_global, b_global, np.zeros(dim)
        else:
            u = alpha * g.standard_normal()
            big_b = beta * g.standard_normal()
            w = u + g.standard_normal((dim, num_classes))
            b = u + g.standard_normal(num_classes)
            v = big_b + g.standard_normal(dim)
        x = v + std_x * g.standard_normal((n, dim))
        y = np.argmax(x @ w + b, axis=1).astype(np.int64)
        n_tr = int(math.floor((1.0 - test_fraction) * n + 1e-9))
        xs_tr.append(x[:n_tr])
        ys_tr.append(y[:n_tr])
        gs.append(np.full(n_tr, k, dtype=np.int64))
        xs_te.append(x[n_tr:])
        ys_te.append(y[n_tr:])
    name = "synthetic_iid" if iid else f"synthetic({alpha:g},{beta:g})"
    return Dataset(
        name,
        np.concatenate(xs_tr).astype(np.float32),
        np.concatenate(ys_tr),
        np.concatenate(xs_te).astype(np.float32),
        np.concatenate(ys_te),
        num_classes=num_classes,
        groups=np.concatenate(gs),
    )


# ----------------------------------------------------------------------------- npz


@register_dataset("npz")
def load_npz(
    seed: int,
    *,
    path: str | Path,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
) -> Dataset:
    """The user's own arrays from an ``.npz`` file, checked so bad data fails here, not mid-run.

    Keys: ``x_train, y_train`` with optional ``x_test, y_test`` and ``groups`` (one user id per
    training sample); or ``x, y`` (and optional ``groups``), split stratified by ``test_fraction``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"npz dataset: no such file {str(p)!r}")
    try:
        f = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read as .npz ({e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{p}: not an .npz archive (np.savez writes one)")
    with f:
        try:
            arrays = {k: f[k] for k in f.files}
        except ValueError as e:  # object arrays need pickle, which we refuse for safety
            raise ValueError(f"{p}: cannot read arrays ({e})") from e

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise ValueError(f"{p}: missing key {key!r} (found: {', '.join(sorted(arrays))})")
        return arrays[key]

    if "x_train" in arrays and "x" in arrays:
        raise ValueError(f"{p}: has both 'x_train' and 'x'; keep one layout")
    split = "x_train" not in arrays and "x" in arrays
    kx, ky = ("x", "y") if split else ("x_train", "y_train")
    x = _as_features(need(kx), f"{p}[{kx!r}]")
    y = _as_labels(need(ky), f"{p}[{ky!r}]")
    if len(x) != len(y):
        raise ValueError(f"{p}: {kx!r} has {len(x)} samples but {ky!r} has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{p}: {kx!r} is empty")
    groups = None
    if "groups" in arrays:
        groups = _as_labels(arrays["groups"], f"{p}['groups']")
        if len(groups) != len(y):
            raise ValueError(f"{p}: 'groups' has {len(groups)} entries but {kx!r} has {len(y)}")

    if split:
        if "x_test" in arrays or "y_test" in arrays:
            raise ValueError(f"{p}: 'x_test'/'y_test' go with 'x_train'/'y_train', not 'x'/'y'")
        tr, te = _stratified_split(y, test_fraction, rng(seed, "npz", "split"))
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        groups = None if groups is None else groups[tr]
    elif "x_test" in arrays or "y_test" in arrays:
        x_tr, y_tr = x, y
        x_te = _as_features(need("x_test"), f"{p}['x_test']")
        y_te = _as_labels(need("y_test"), f"{p}['y_test']")
        if len(x_te) != len(y_te):
            raise ValueError(f"{p}: 'x_test' has {len(x_te)} samples but 'y_test' has {len(y_te)}")
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise ValueError(
                f"{p}: 'x_test' samples have shape {x_te.shape[1:]}, "
                f"'x_train' samples {x_tr.shape[1:]}"
            )
    else:
        x_tr, y_tr = x, y
        x_te, y_te = x[:0], y[:0]
    k = _num_classes(num_classes, str(p), y_tr, y_te)
    return Dataset(f"npz:{p.name}", x_tr, y_tr, x_te, y_te, num_classes=k, groups=groups)


# ----------------------------------------------------------------------------- idx (MNIST)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzip-compressed or not (detected by magic bytes).

    Layout: 0x00 0x00, dtype code, ndim, then ndim big-endian uint32 sizes, then the data.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"idx dataset: no such file {str(p)!r}")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{p}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{p}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{p}: idx header truncated or has ndim=0")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    size = math.prod(shape) * dtype.itemsize
    if len(raw) - header != size:
        raise ValueError(
            f"{p}: header says shape {shape} ({size} data bytes), file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_pair(images: str | Path, labels: str | Path, flat: bool) -> tuple[np.ndarray, np.ndarray]:
    img = read_idx(images)
    lab = read_idx(labels)
    if img.ndim < 2:
        raise ValueError(f"{images}: images must have ndim >= 2, got shape {img.shape}")
    if len(img) != len(lab):
        raise ValueError(f"{images} has {len(img)} images but {labels} has {len(lab)} labels")
    x = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
    if flat:
        x = x.reshape(len(x), -1)
    elif x.ndim == 3:
        x = x[:, None]  # (n, h, w) -> (n, 1, h, w), the channel axis a CNN expects
    return _as_features(x, str(images)), _as_labels(lab, str(labels))


@register_dataset("idx")
def load_idx(
    seed: int,
    *,
    train_images: str | Path,
    train_labels: str | Path,
    test_images: str | Path | None = None,
    test_labels: str | Path | None = None,
    flat: bool = True,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
) -> Dataset:
    """MNIST-style idx files the user downloaded once (plain or .gz); uint8 pixels -> [0, 1].

    Without test files the train files are split stratified by ``test_fraction``.
    """
    if (test_images is None) != (test_labels is None):
        raise ValueError("idx dataset: give both test_images and test_labels, or neither")
    x, y = _idx_pair(train_images, train_labels, flat)
    if test_images is not None and test_labels is not None:
        x_te, y_te = _idx_pair(test_images, test_labels, flat)
        if x_te.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{test_images}: images have shape {x_te.shape[1:]}, train images {x.shape[1:]}"
            )
        x_tr, y_tr = x, y
    else:
        tr, te = _stratified_split(y, test_fraction, rng(seed, "idx", "split"))
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    k = _num_classes(num_classes, str(train_labels), y_tr, y_te)
    return Dataset(f"idx:{Path(train_images).name}", x_tr, y_tr, x_te, y_te, num_classes=k)
