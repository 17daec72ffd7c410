"""The one registry: duplicates refused, one "did you mean", import paths that show real errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedkit.registry import ImportPathError, Registry, UnknownName, did_you_mean, resolve_import


def _reg() -> Registry[Callable[..., int]]:
    reg: Registry[Callable[..., int]] = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        reg.register(name)(lambda: 1)
    return reg


def test_duplicate_names_are_refused_and_the_first_entry_stays() -> None:
    reg = _reg()
    first = reg["beta"]
    with pytest.raises(ValueError, match="widget 'beta' registered twice"):
        reg.register("beta")(lambda: 2)
    assert reg["beta"] is first
    with pytest.raises(ValueError, match="without ':'"):
        reg.register("pkg:fn")


def test_the_real_registries_refuse_a_second_entry_too() -> None:
    from fedkit.compression import REGISTRY
    from fedkit.data import DATASETS, PARTITIONERS
    from fedkit.models import MODELS

    for reg, name in ((REGISTRY, "topk"), (DATASETS, "digits"), (PARTITIONERS, "iid"), (MODELS, "mlp")):
        before = reg[name]
        with pytest.raises(ValueError, match="registered twice"):
            reg.register(name)(lambda: None)
        assert reg[name] is before


def test_unknown_name_says_the_closest_and_every_known_name() -> None:
    reg = _reg()
    with pytest.raises(UnknownName) as e:
        reg["gamam"]
    assert str(e.value) == "unknown widget 'gamam' (did you mean 'gamma'?); known: alpha, beta, gamma"
    assert isinstance(e.value, ValueError) and isinstance(e.value, KeyError)
    with pytest.raises(ValueError, match=r"^unknown widget 'zzz'; known: alpha, beta, gamma$"):
        reg["zzz"]
    with pytest.raises(ValueError, match="or an import path 'package.module:attr'"):
        reg.lookup("zzz")


def test_did_you_mean_is_case_insensitive_and_silent_when_nothing_is_close() -> None:
    assert did_you_mean("FedAdm", ["fedavg", "fedadam"]) == " (did you mean 'fedadam'?)"
    assert did_you_mean("Count", ["count", "per_round"]) == " (did you mean 'count'?)"
    assert did_you_mean("xyz", ["fedavg", "fedadam"]) == ""
    assert did_you_mean("a", []) == ""


def test_names_iteration_and_membership() -> None:
    reg = _reg()
    assert reg.names() == ["alpha", "beta", "gamma"]
    assert sorted(reg) == reg.names() and len(reg) == 3
    assert "beta" in reg and "delta" not in reg


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """chdir into an empty directory that is not on sys.path; write modules there by name."""
    monkeypatch.chdir(tmp_path)
    here = os.path.realpath(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and os.path.realpath(p) != here])
    written: list[str] = []
    tag = re.sub(r"\W", "_", tmp_path.name)

    def write(stem: str, source: str) -> str:
        name = f"fk_{stem}_{tag}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_import_path_finds_a_module_in_the_current_directory(user_dir: Callable[[str, str], str]) -> None:
    mod = user_dir("nets", "def make(input_shape, num_classes, width=2):\n    return ('net', width)\n")
    reg = _reg()
    fn = reg.lookup(f"{mod}:make")
    assert fn((4,), 2, width=3) == ("net", 3)
    assert os.getcwd() in sys.path  # what made it importable, as the module docstring says
    assert reg.lookup("alpha") is reg["alpha"]  # names still win


def test_a_model_factory_by_path_builds_and_validates_in_a_scenario(
    user_dir: Callable[[str, str], str], tiny: Callable[..., dict]
) -> None:
    from torch import nn

    from fedkit.models import build_model
    from fedkit.scenario.load import validate

    mod = user_dir(
        "torchnet",
        """
        from torch import nn
        def make(input_shape, num_classes, width: int = 4):
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.Linear(width, num_classes))
        """,
    )
    m = build_model({"name": f"{mod}:make", "width": 3}, (6,), 2)
    assert isinstance(m, nn.Module) and [tuple(p.shape) for p in m.parameters()][0] == (3, 6)
    s = validate(tiny(model={"name": f"{mod}:make", "width": 5}))
    assert s.model == {"name": f"{mod}:make", "width": 5}


def test_a_failing_import_shows_the_real_error_not_unknown(
    user_dir: Callable[[str, str], str], tiny: Callable[..., dict]
) -> None:
    from fedkit.models import build_model
    from fedkit.scenario.load import ScenarioError, validate

    mod = user_dir("needs", "import torchvisionx_not_installed\ndef make(): ...\n")
    expected = (
        f"cannot import model factory '{mod}:make': ModuleNotFoundError: "
        f"No module named 'torchvisionx_not_installed' (while importing {mod})"
    )
    with pytest.raises(ImportPathError) as e:
        build_model({"name": f"{mod}:make"}, (4,), 2)
    assert str(e.value) == expected
    assert isinstance(e.value.__cause__, ModuleNotFoundError)  # the traceback is kept
    with pytest.raises(ScenarioError) as se:
        validate(tiny(model={"name": f"{mod}:make"}))
    assert expected in str(se.value) and "unknown model" not in str(se.value)


def test_import_errors_name_their_cause(user_dir: Callable[[str, str], str]) -> None:
    boom = user_dir("boom", "x = 1\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(ImportPathError, match=rf"RuntimeError: no GPU here \(while importing {boom}, at .*{boom}\.py:2\)"):
        resolve_import(f"{boom}:make", "model factory")
    ok = user_dir("ok", "def make_net(): ...\nVALUE = 3\n")
    with pytest.raises(ImportPathError, match=rf"'{ok}' has no attribute 'make_nte' \(did you mean 'make_net'\?\)"):
        resolve_import(f"{ok}:make_nte", "model factory")
    with pytest.raises(ImportPathError, match=r"VALUE' is not callable \(it is a int\)"):
        resolve_import(f"{ok}:VALUE", "model factory")
    with pytest.raises(ImportPathError, match=r"No module named 'fk_absent_zz' \(searched sys.path"):
        resolve_import("fk_absent_zz:make", "model factory")
    with pytest.raises(ImportPathError, match="expected 'package.module:attr'"):
        resolve_import("a b:make", "model factory")


def test_importing_fedkit_changes_no_global_torch_setting() -> None:
    code = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(3)
        before = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
                  torch.are_deterministic_algorithms_enabled())
        import fedkit, fedkit.models, fedkit.compression, fedkit.data, fedkit.aggregation
        import fedkit.scenario.build, fedkit.deploy
        after = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
                 torch.are_deterministic_algorithms_enabled())
        assert before == after, (before, after)
        """
    )
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
