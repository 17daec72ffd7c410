"""Scenario schema for ``attacks: [{kind: scaling, fraction: 0.2, factor: 10}, ...]``.

One model per kind (a union discriminated by ``kind``), so each kind accepts exactly its own
parameters and unknown keys are errors. The parameters and defaults are those of the attack
classes in ``fedkit/attacks.py``; :meth:`build` makes the attack. Fractions are of the whole
client population, malicious sets are disjoint across entries (``assign_malicious``) and the
fractions may add up to at most 1.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from fedkit.attacks import Attack, make_attack
from fedkit.scenario.schema import Strict

Fraction = Annotated[float, Field(gt=0, le=1, description="share of all clients that attack")]


class _AttackBase(Strict):
    fraction: Fraction

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"kind", "fraction"})

    def build(self) -> Attack:
        """The update attack (not for ``label_flip``, a data attack)."""
        return make_attack(self.kind, **self.params())  # type: ignore[attr-defined]


class SignFlipSpec(_AttackBase):
    kind: Literal["sign_flip"]
    factor: float = Field(default=1.0, gt=0)


class ScalingSpec(_AttackBase):
    kind: Literal["scaling"]
    factor: float | None = Field(default=None, gt=0, description="null: number of updates")


class GaussianSpec(_AttackBase):
    kind: Literal["gaussian"]
    std: float = Field(default=1.0, ge=0)


class LittleIsEnoughSpec(_AttackBase):
    kind: Literal["little_is_enough"]
    z: float | None = Field(default=None, ge=0, description="null: Baruch et al.'s z_max")


class LabelFlipSpec(_AttackBase):
    kind: Literal["label_flip"]


AttackSpec = Annotated[
    SignFlipSpec | ScalingSpec | GaussianSpec | LittleIsEnoughSpec | LabelFlipSpec,
    Field(discriminator="kind"),
]


def _total(specs: list[Any]) -> list[Any]:
    total = sum(s.fraction for s in specs)
    if total > 1.0 + 1e-9:
        raise ValueError(f"attack fractions add up to {total:g}; at most 1 (sets are disjoint)")
    return specs


Attacks = Annotated[list[AttackSpec], AfterValidator(_total)]
"""The ``attacks:`` section: use as ``attacks: Attacks = []`` on the scenario model."""
