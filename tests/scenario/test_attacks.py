"""The ``attacks:`` scenario section: one schema per kind, matching the attack classes."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import TypeAdapter, ValidationError

from fedkit.attacks import KINDS, UPDATE_ATTACKS, Scaling
from fedkit.scenario.attacks import Attacks, AttackSpec

ADAPTER = TypeAdapter(Attacks)


def test_valid_section_builds_attacks() -> None:
    specs = ADAPTER.validate_python(
        [
            {"kind": "scaling", "fraction": 0.2, "factor": 10},
            {"kind": "label_flip", "fraction": 0.1},
        ]
    )
    assert specs[0].build() == Scaling(10.0)
    assert specs[1].kind == "label_flip" and specs[1].fraction == 0.1


@pytest.mark.parametrize(
    "section, message",
    [
        ([{"kind": "scalin", "fraction": 0.2}], "does not match any of the expected tags"),
        ([{"kind": "scaling", "fraction": 0.2, "std": 1.0}], "Extra inputs are not permitted"),
        ([{"kind": "gaussian"}], "fraction"),
        ([{"kind": "gaussian", "fraction": 0.0}], "greater than 0"),
        ([{"kind": "sign_flip", "fraction": 0.2, "factor": -1}], "greater than 0"),
        (
            [{"kind": "gaussian", "fraction": 0.6}, {"kind": "sign_flip", "fraction": 0.5}],
            "add up to 1.1",
        ),
    ],
)
def test_bad_sections_are_refused(section: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ADAPTER.validate_python(section)


def test_every_kind_has_a_schema_with_the_attack_defaults() -> None:
    one = TypeAdapter(AttackSpec)
    for kind in KINDS:
        spec = one.validate_python({"kind": kind, "fraction": 0.1})
        if kind in UPDATE_ATTACKS:
            defaults = {f.name: f.default for f in dataclasses.fields(UPDATE_ATTACKS[kind])}
            assert spec.params() == defaults
            assert spec.build() == UPDATE_ATTACKS[kind]()
