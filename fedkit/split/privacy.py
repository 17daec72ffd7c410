"""Split-learning privacy: two defences of the smashed data and two attacks that measure them.

References: NoPeek, Vepakomma, Gupta, Swedish, Raskar, "NoPeek: Information leakage reduction to
share activations in distributed deep learning" (ICDMW 2020); distance correlation, Székely,
Rizzo & Bakirov, Ann. Statist. 2007; label leakage (the norm attack), Li, Sun, Wang, Zhang, Liu,
Wang, "Label Leakage and Protection in Two-party Split Learning" (ICLR 2022); model inversion of
smashed data with an inverse network trained on auxiliary data, He, Zhang & Lee (ACSAC 2019).
Notes: REFERENCES.md A5.

Defences (:class:`Defence`, scenario ``split: {defence: {...}}``), both on the client:

* **nopeek** ``weight`` -- the client part's loss becomes ``task loss + weight * dCor(x, A)``, the
  sample distance correlation between the batch's inputs and its smashed data ``A``
  (:func:`distance_correlation`, O(B^2) per batch: keep batches <= 64). The task loss is the
  server's (its gradient comes down) or the client's own (U-shape tail, local-loss head); the
  server part trains on its loss alone.
* **noise** ``sigma`` -- Gaussian noise N(0, sigma^2) is added to ``A`` before it leaves the
  client; the draw is keyed by (seed, "split-noise", round, client, step) through
  :mod:`fedkit.rng`, so every mode sends the same values. The gradient that comes back is the
  gradient at the noisy point, applied to the clean ``A`` (the noise is additive).

Attacks (scenario ``split: {privacy_eval: [...]}``; ``privacy_*`` in ``summary.json``):

* **label_leakage** -- on a binary task, the server's endpoint scores every sample of every
  batch by the norm of the gradient it sends down (dL/dA, per-sample loss scale) and
  :class:`LeakMeter` gives the round's ROC AUC of that score against the batch's labels
  (``leak_auc`` in metrics.jsonl; ``privacy_leak_auc`` is the mean over rounds). This is Li et
  al.'s threat: whoever receives the gradients (the party holding the client part, without the
  labels in their two-party setting) learns the labels. Reported orientation-free,
  max(AUC, 1 - AUC): 0.5 = nothing leaks, 1 = the norm gives every label away. Positives of an
  imbalanced task stand out because the model is less sure of them. Only for the schemes that
  send labels up and gradients down (vanilla, splitfed_v1/v2).
* **reconstruction** -- after the last round (:func:`evaluate_privacy`) the attacker (the
  server) holds auxiliary data from the input distribution (the training inputs here) and
  queries the final client part on it, as He et al.'s black-box inverse network: it trains a
  decoder from (noisy) smashed data back to inputs and decodes the held-out set.
  ``privacy_recon_mse`` is its per-pixel MSE, ``privacy_recon_base_mse`` the MSE of guessing
  the auxiliary mean (what knowing nothing gives), and ``privacy_dcor`` the distance
  correlation between held-out inputs and their smashed data (NoPeek's own target).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkit.models.params import set_params
from fedkit.rng import rng as keyed_rng
from fedkit.rng import seed_int
from fedkit.types import ClientId, Params

__all__ = [
    "ATTACKS", "Defence", "Guard", "LeakMeter", "distance_correlation", "evaluate_privacy",
    "label_leakage_auc", "reconstruction",
]

ATTACKS = ("label_leakage", "reconstruction")
_EPS = 1e-12


@dataclass(frozen=True)
class Defence:
    """The client's defences of its smashed data (0: off)."""

    nopeek: float = 0.0  # weight of dCor(x, A) in the client part's loss
    noise: float = 0.0  # sigma of the Gaussian noise added to A before it is sent

    def __post_init__(self) -> None:
        for name in ("nopeek", "noise"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"defence {name} must be a finite number >= 0, got {v}")

    @property
    def active(self) -> bool:
        return self.nopeek > 0 or self.noise > 0


def _centred(x: torch.Tensor) -> torch.Tensor:
    """Double-centred pairwise Euclidean distances of the rows of ``x`` (flattened per sample)."""
    flat = x.reshape(len(x), -1)
    sq = (flat.unsqueeze(1) - flat.unsqueeze(0)).pow(2).sum(-1)
    d = torch.sqrt(sq + _EPS) - math.sqrt(_EPS)  # differentiable at 0, exactly 0 on the diagonal
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation of paired samples (rows), in [0, 1]; differentiable.

    dCor^2 = dCov^2(x, z) / sqrt(dVar^2(x) dVar^2(z)) with the V-statistics of Székely et al.
    (2007): 1 for z = a x + b (a != 0) or any rotation of x, near 0 for independent samples.

    >>> x = torch.randn(64, 3)
    >>> round(float(distance_correlation(x, 2 * x + 1)), 4)
    1.0
    """
    if len(x) != len(z) or len(x) < 2:
        raise ValueError(f"distance correlation needs >= 2 paired samples, got {len(x)} and {len(z)}")
    dtype = torch.promote_types(x.dtype, z.dtype)
    a, b = _centred(x.to(dtype)), _centred(z.to(dtype))
    cov = (a * b).mean()
    var = torch.sqrt((a * a).mean() * (b * b).mean() + _EPS**2)  # finite gradient when z is constant
    return torch.sqrt(torch.clamp(cov / (var + _EPS), min=0.0) + _EPS) - math.sqrt(_EPS)


class Guard:
    """A client's defences for one task: what it sends for ``A`` and the penalty it adds."""

    def __init__(self, defence: Defence, seed: int, round: int, client: ClientId) -> None:
        self.defence, self.seed, self.round, self.client = defence, seed, round, client

    def smash(self, a: torch.Tensor, step: int) -> np.ndarray:
        """The smashed data as it leaves the client: ``A`` plus keyed Gaussian noise."""
        out = a.detach().numpy()
        if self.defence.noise > 0:
            gen = keyed_rng(self.seed, "split-noise", self.round, self.client, step)
            out = out + np.float32(self.defence.noise) * gen.standard_normal(out.shape, dtype=np.float32)
        return out

    def penalty(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """NoPeek's term ``weight * dCor(x, A)`` for the client part's loss (None when off)."""
        if self.defence.nopeek <= 0:
            return None
        return self.defence.nopeek * distance_correlation(x, a)


# ------------------------------------------------------------------------------------ attacks


def label_leakage_auc(norms: np.ndarray, labels: np.ndarray) -> float:
    """Leak AUC of the gradient-norm score against binary ``labels`` (Li et al.'s norm attack),
    orientation-free: max(AUC, 1 - AUC), in [0.5, 1]."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError(f"label leakage needs both classes of a binary task, got labels {np.unique(labels)}")
    auc = float(roc_auc_score(labels, np.asarray(norms, dtype=np.float64)))
    return max(auc, 1.0 - auc)


def _noisy(a: torch.Tensor, sigma: float, seed: int, what: str) -> torch.Tensor:
    if sigma <= 0:
        return a
    gen = keyed_rng(seed, "privacy-eval", what)
    return a + sigma * torch.from_numpy(gen.standard_normal(tuple(a.shape), dtype=np.float32))


class LeakMeter:
    """The server's record of one round's (per-sample gradient norm, label) pairs; :meth:`auc`
    is the round's leak AUC (None until both classes were seen)."""

    def __init__(self) -> None:
        self._norms: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def add(self, grad: np.ndarray, labels: np.ndarray) -> None:
        """``grad``: dL/dA of one batch (mean loss over the batch), ``labels`` its labels."""
        flat = np.asarray(grad, dtype=np.float64).reshape(len(grad), -1)
        self._norms.append(np.linalg.norm(flat, axis=1) * len(grad))  # per-sample loss scale
        self._labels.append(np.asarray(labels))

    def auc(self) -> float | None:
        if not self._labels:
            return None
        y = np.concatenate(self._labels)
        if set(np.unique(y).tolist()) != {0, 1}:
            return None
        return label_leakage_auc(np.concatenate(self._norms), y)


def reconstruction(
    z_aux: torch.Tensor, x_aux: torch.Tensor, z_test: torch.Tensor, x_test: torch.Tensor, *,
    seed: int = 0, epochs: int = 100, batch_size: int = 64, hidden: int = 256, lr: float = 1e-3,
) -> dict[str, float]:
    """Train a decoder smashed data -> input on the auxiliary pairs, report its held-out MSE and
    the MSE of guessing the auxiliary mean input. Initialisation and batches keyed by ``seed``."""
    za, zt = z_aux.reshape(len(z_aux), -1).detach(), z_test.reshape(len(z_test), -1).detach()
    xa, xt = x_aux.reshape(len(x_aux), -1).detach(), x_test.reshape(len(x_test), -1).detach()
    mu, sd = za.mean(0), za.std() + 1e-6  # the attacker standardises what it sees (one scale)
    za, zt = (za - mu) / sd, (zt - mu) / sd
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_int(seed, "privacy-decoder"))
        dec = nn.Sequential(nn.Linear(za.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                            nn.Linear(hidden, xa.shape[1]))
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    gen = keyed_rng(seed, "privacy-decoder", "batches")
    for _ in range(epochs):
        perm = torch.from_numpy(gen.permutation(len(za)))
        for i in range(0, len(za), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            F.mse_loss(dec(za[idx]), xa[idx]).backward()
            opt.step()
    with torch.no_grad():
        mse = float(F.mse_loss(dec(zt), xt))
        base = float(F.mse_loss(xa.mean(0).expand_as(xt), xt))
    return {"recon_mse": mse, "recon_base_mse": base}


def evaluate_privacy(
    setup: object,
    client: Params,
    server: Params,
    data: tuple[np.ndarray, np.ndarray],
    *,
    defence: Defence | None = None,
    seed: int = 0,
    epochs: int = 100,
) -> dict[str, float]:
    """The reconstruction attack on the final client part: ``{"privacy_<metric>": value}``.

    ``setup`` is the run's :class:`~fedkit.split.schemes.SplitSetup`, ``client`` / ``server`` its
    final parts, ``data`` (x_aux, x_test): the attacker's auxiliary inputs and the held-out
    inputs it decodes. Activations carry the defence's noise (keyed by ``seed``); the decoder
    trains ``epochs`` passes over the auxiliary data.
    """
    from fedkit.split.schemes import SplitSetup, whole

    assert isinstance(setup, SplitSetup)
    defence = defence or Defence()
    model, join = whole(setup)
    set_params(model, join(client, server))
    first = copy.deepcopy(next(iter(model.children()))).eval()
    x_aux, x_test = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_int(seed, "privacy-eval"))
        with torch.no_grad():
            a_test = _noisy(first(x_test), defence.noise, seed, "test")
            a_aux = _noisy(first(x_aux), defence.noise, seed, "aux")
            dcor = float(distance_correlation(x_test, a_test))
        rec = reconstruction(a_aux, x_aux, a_test, x_test, seed=seed, epochs=epochs)
    return {f"privacy_{k}": v for k, v in rec.items()} | {"privacy_dcor": dcor}
