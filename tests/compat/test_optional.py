"""Flower is an optional extra: only fedkit/compat imports it, and without it the user is told
what to install (these tests run whether or not flwr is installed)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedkit.cli import main
from tests.conftest import tiny_raw

PKG = Path(__file__).parents[2] / "fedkit"


def test_only_compat_imports_flwr() -> None:
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        if "compat" in f.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            bad += [f"{f.relative_to(PKG)} imports {n}" for n in names if n == "flwr" or n.startswith("flwr.")]
    assert not bad, bad


def test_without_flower_the_import_error_names_the_extra() -> None:
    code = "import sys; sys.modules['flwr'] = None; import fedkit.compat.flower"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode != 0
    assert "pip install 'fedkit[flower]'" in r.stderr


def test_without_flower_the_cli_says_what_to_install(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(tiny_raw()))
    assert main(["run", str(scen), "--engine", "flower", "--out", str(tmp_path / "run")]) == 2
    assert "pip install 'fedkit[flower]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
