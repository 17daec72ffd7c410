"""Imports flow one way (ARCHITECTURE.md): numpy-only layers import neither torch nor grpc,
and the round engine knows nothing of the transport."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).parents[1] / "fedkit"

RULES = {
    # package: imports it must not make (prefixes)
    "types.py": ("torch", "grpc", "fedkit."),
    "rng.py": ("torch", "grpc", "fedkit."),
    "registry.py": ("torch", "grpc", "fedkit."),
    # the codec base knows no codec: spec -> codec construction lives in compression/spec.py
    # the protocol knows none of its codecs (limits is a leaf helper of the decoders)
    "compression/base.py": tuple(
        f"fedkit.compression.{m}" for m in (
            "spec", "pipeline", "ef", "adaptive", "select", "identity", "cast", "quant", "qsgd",
            "sign", "kmeans", "topk", "randk", "powersgd", "zstd",
        )
    ),
    "aggregation": ("torch", "grpc", "fedkit.models", "fedkit.runtime", "fedkit.transport", "fedkit.scenario"),
    "compression": ("torch", "grpc", "fedkit.models", "fedkit.runtime", "fedkit.transport", "fedkit.scenario"),
    "data": ("torch", "grpc", "fedkit.models", "fedkit.runtime", "fedkit.transport", "fedkit.scenario"),
    "secure": ("torch", "grpc", "fedkit.models", "fedkit.runtime", "fedkit.transport", "fedkit.scenario"),
    "attacks.py": ("torch", "grpc", "fedkit.models", "fedkit.runtime", "fedkit.transport", "fedkit.scenario"),
    "models": ("grpc", "fedkit.runtime", "fedkit.transport", "fedkit.scenario"),
    "runtime": ("grpc", "fedkit.transport", "fedkit.scenario", "fedkit.cli", "fedkit.experiment"),
    "split": ("grpc", "fedkit.runtime", "fedkit.transport", "fedkit.scenario", "fedkit.cli"),
    "sim": ("grpc", "fedkit.transport", "fedkit.scenario", "fedkit.cli"),
    "peft": ("grpc", "fedkit.transport", "fedkit.scenario", "fedkit.cli", "fedkit.experiment"),
    "transport": ("torch", "fedkit.runtime", "fedkit.scenario", "fedkit.models", "fedkit.cli"),
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _under(name: str, banned: str) -> bool:
    """``fedkit.`` bans every fedkit module; ``torch`` bans torch and torch.*."""
    if banned.endswith("."):
        return name.startswith(banned)
    return name == banned or name.startswith(banned + ".")


@pytest.mark.parametrize("where", sorted(RULES))
def test_imports_flow_one_way(where: str) -> None:
    target = PKG / where
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    bad = [
        f"{f.relative_to(PKG)} imports {name}"
        for f in files
        if "_proto" not in f.parts
        for name in _imports(f)
        if any(_under(name, banned) for banned in RULES[where])
    ]
    assert not bad, bad
