"""The ``participation:`` scenario section: which sampled clients answer, unknown to the server.

FedAU's setting (Wang & Ji, ICLR 2024; ``fedkit/sim/participation.py``): client n takes part in a
round with a probability p_n the server does not know, following a pattern; a client that does
not take part never answers (its task is open until the round's deadline), and does not train::

    participation:
      kind: bernoulli            # bernoulli | markov | cyclic
      probs: [0.5, 0.1, ...]     # one per client (client-0 first), or one number for all, or
      # probs: {kind: dirichlet, alpha: 0.1, mean: 0.1, min: 0.02}   (FedAU's, from label mix)
      to_active: 0.05            # markov only: P(inactive -> active) per round
      cycle: 10                  # cyclic only: rounds per cycle

The draw for (round r, client) is keyed by (seed, r - 1, client) (patterns count rounds from 0).
Simulated in-process only: a deployed server's clients take part as they do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from fedkit.sim.participation import Bernoulli, Cyclic, MarkovPattern, Pattern, fedau_probabilities
from fedkit.types import ClientId, Strict, Task


class DirichletProbs(Strict):
    """FedAU's probabilities: ``p_n = max(min, mean x L x <label mix of n, w>)``, ``w ~ Dir(alpha)``."""

    kind: Literal["dirichlet"]
    alpha: float = Field(default=0.1, gt=0)
    mean: float = Field(default=0.1, gt=0, le=1)
    min: float = Field(default=0.02, ge=0, le=1)


class Participation(Strict):
    kind: Literal["bernoulli", "markov", "cyclic"]
    probs: float | list[float] | DirichletProbs
    to_active: float | None = Field(default=None, gt=0, le=1)
    cycle: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _fits(self) -> Participation:
        if self.to_active is not None and self.kind != "markov":
            raise ValueError(f"to_active is for kind: markov, not {self.kind}")
        if self.cycle is not None and self.kind != "cyclic":
            raise ValueError(f"cycle is for kind: cyclic, not {self.kind}")
        values = [self.probs] if isinstance(self.probs, float) else self.probs
        if isinstance(values, list):
            bad = [p for p in values if not 0 < p <= 1]
            if bad:
                raise ValueError(f"participation probabilities must be in (0, 1], got {bad[:5]}")
        return self

    def check_count(self, count: int) -> None:
        if isinstance(self.probs, list) and len(self.probs) != count:
            raise ValueError(
                f"participation.probs has {len(self.probs)} entries, clients.count is {count}"
            )


def probabilities(
    spec: Participation, seed: int, labels: Mapping[ClientId, np.ndarray]
) -> dict[ClientId, float]:
    """Each client's p_n; ``labels``: each client's training labels, in client order."""
    names = list(labels)
    if isinstance(spec.probs, DirichletProbs):
        classes = 1 + max((int(y.max()) for y in labels.values() if len(y)), default=0)
        counts = {c: np.bincount(np.asarray(y, np.int64), minlength=classes).tolist() for c, y in labels.items()}
        d = spec.probs
        return fedau_probabilities(counts, seed, alpha=d.alpha, mean=d.mean, minimum=d.min)
    if isinstance(spec.probs, float):
        return {c: spec.probs for c in names}
    spec.check_count(len(names))
    return dict(zip(names, spec.probs, strict=True))


def pattern(spec: Participation, probs: Mapping[ClientId, float]) -> Pattern:
    if spec.kind == "bernoulli":
        return Bernoulli(dict(probs))
    if spec.kind == "markov":
        return MarkovPattern(dict(probs), **({} if spec.to_active is None else {"to_active": spec.to_active}))
    return Cyclic(dict(probs), **({} if spec.cycle is None else {"cycle": spec.cycle}))


def presence(
    spec: Participation | None, seed: int, labels: Mapping[ClientId, np.ndarray]
) -> Callable[[Task], bool] | None:
    """The in-process Link's ``present`` predicate: does this task's client answer it?"""
    if spec is None:
        return None
    pat = pattern(spec, probabilities(spec, seed, labels))
    return lambda task: pat.participates(seed, max(task.round - 1, 0), task.client)
