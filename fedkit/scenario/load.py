"""Reading scenario files: YAML -> overrides -> validated :class:`Scenario`, with errors that
name the file, the field path and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedkit.registry import did_you_mean
from fedkit.scenario.schema import Scenario, Strict


class ScenarioError(ValueError):
    """A scenario file is invalid; ``str()`` lists every problem as ``file: path: message``."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {loc or '(top level)'}: {msg}" for loc, msg in problems))


def _fields_at(loc: Sequence[int | str]) -> list[str]:
    """Field names of the schema model at a location, for 'did you mean' hints."""
    model: Any = Scenario
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not str(p).startswith("function-")]
        path = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            allowed = _fields_at(loc[:-1])
            msg = f"unknown key {key!r}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        out.append((path, msg))
    return out


def parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw scenario dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ScenarioError("--set", [(item, "expected key=value, e.g. rounds=5")])
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ScenarioError("--set", [(key, f"{part!r} is not a section")])
            node = nxt
        node[parts[-1]] = parse_value(value)
    return raw


def validate(raw: Any, source: str = "<scenario>", base_dir: str | Path | None = None) -> Scenario:
    """``base_dir``: the folder relative file names (device traces) are read from."""
    if not isinstance(raw, dict):
        raise ScenarioError(source, [("", "a scenario must be a YAML mapping of keys to values")])
    try:
        return Scenario.model_validate(raw, context={"base_dir": str(base_dir)} if base_dir else None)
    except ValidationError as e:
        raise ScenarioError(source, _problems(e)) from None


def load(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(str(path), [("", "file not found")]) from None
    except yaml.YAMLError as e:
        raise ScenarioError(str(path), [("", f"not valid YAML: {e}")]) from None
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return validate(raw, str(path), path.resolve().parent)


def dump(scenario: Strict) -> str:
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
