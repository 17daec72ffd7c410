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
from fedkit.types import Strict

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


# --- wiring into a scenario's run (fedkit/scenario/build.py calls these) ----------------------

COLLUDING = frozenset({"little_is_enough"})
"""Update attacks that need the round's benign updates: simulated at the server's door."""


def malicious_sets(s: Any) -> list[tuple[Any, frozenset[str]]]:
    """Each attack entry of scenario ``s`` with its malicious clients (disjoint, by seed)."""
    from fedkit.attacks import assign_malicious
    from fedkit.scenario.build import client_names

    if not s.attacks:
        return []
    sets = assign_malicious(client_names(s.clients.count), [a.fraction for a in s.attacks], s.seed)
    return list(zip(s.attacks, sets, strict=True))


def label_flipped(s: Any) -> frozenset[str]:
    """The clients whose training labels are flipped (data poisoning)."""
    return frozenset(c for a, bad in malicious_sets(s) if a.kind == "label_flip" for c in bad)


def client_mods(s: Any) -> dict[str, tuple[Any, ...]]:
    """The mod chain of each malicious client that attacks its own update (others: default).

    Scaling's ``factor: null`` boosts by the clients asked per round (``n / lr`` with server
    ``lr = 1``: model replacement)."""
    from fedkit.attacks import Scaling
    from fedkit.runtime.adversary import attack_mod
    from fedkit.runtime.client import DEFAULT_MODS, dp_clip
    from fedkit.scenario.privacy import sampling_of

    out: dict[str, tuple[Any, ...]] = {}
    for a, bad in malicious_sets(s):
        if a.kind == "label_flip" or a.kind in COLLUDING:
            continue
        attack = a.build()
        if isinstance(attack, Scaling) and attack.factor is None:
            attack = Scaling(max(1.0, sampling_of(s)[2]))
        at = DEFAULT_MODS.index(dp_clip)  # just outside clipping: nothing clips the attack's output,
        mods = (*DEFAULT_MODS[:at], attack_mod(attack), *DEFAULT_MODS[at:])  # masks and codecs still apply
        out |= {c: mods for c in bad}
    return out


def with_colluders(s: Any, aggregator: Any) -> Any:
    """``aggregator`` behind the colluding attacks of ``s`` (none: unchanged)."""
    from fedkit.runtime.adversary import Colluding

    for a, bad in malicious_sets(s):
        if a.kind in COLLUDING:
            aggregator = Colluding(aggregator, a.build(), bad, s.seed)
    return aggregator


def update_attacks(s: Any) -> list[str]:
    """Kinds of ``s``'s attacks that need simulated clients (all but data poisoning)."""
    return [a.kind for a in s.attacks if a.kind != "label_flip"]
