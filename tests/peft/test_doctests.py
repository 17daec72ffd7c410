"""The examples in fedkit.peft's docstrings run and print what they say."""

from __future__ import annotations

import doctest

import pytest

pytest.importorskip("peft")


def test_docstring_examples() -> None:
    import fedkit.peft.describe
    import fedkit.peft.model

    for mod in (fedkit.peft.model, fedkit.peft.describe):
        assert doctest.testmod(mod).failed == 0
