"""The ``devices:`` scenario section: named device profiles, who gets which, and traces.

```yaml
devices:
  profiles:
    phone: {compute: {samples_per_s: 400, spread: 0.5}, up_mbps: 5, down_mbps: 20, latency_ms: 60,
            availability: {kind: markov, mean_on_s: 600, mean_off_s: 1800}, dropout: 0.05}
    rpi4:  {compute: {samples_per_s: 150}, up_mbps: 20, down_mbps: 50, latency_ms: 10,
            lora_rank: 4}           # peft.aggregation flexlora / flora: this class's LoRA rank
  assign: {phone: 0.7, rpi4: 0.3}     # fractions, or {file: devices.csv} (client,profile rows)
  trace: traces/availability.csv      # optional: client,start,end online windows
```

or FedScale's traces instead of profiles: ``fedscale: {capacity: device_capacity.pkl,
behaviour: client_behave_trace.pkl}``. Units and formulas: ``fedkit/sim/devices.py``; file
formats: ``fedkit/sim/traces.py``. Files are read when the scenario is validated, so a bad row
is reported as ``file:line`` with the other errors. Relative paths are resolved against
``context={"base_dir": ...}`` when the validator is given one, else the working directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from fedkit.registry import did_you_mean
from fedkit.sim.availability import ALWAYS, Availability, AvailabilitySpec, MarkovSpec, Windows
from fedkit.sim.devices import Device, DeviceProfile, assign
from fedkit.sim.traces import (
    FedScaleCapacity,
    fedscale_devices,
    load_fedscale_behaviour,
    load_fedscale_capacity,
    load_profiles_csv,
    load_windows_csv,
    trace_keys_for,
)
from fedkit.types import Strict


class Compute(Strict):
    """Inference throughput (forward passes per second; a training sample costs 3) and the
    sigma of its log-normal spread across clients of the profile."""

    samples_per_s: float = Field(gt=0)
    spread: float = Field(default=0.0, ge=0)


class AlwaysOn(Strict):
    kind: Literal["always"] = "always"


class MarkovOnOff(Strict):
    kind: Literal["markov"]
    mean_on_s: float = Field(gt=0)
    mean_off_s: float = Field(gt=0)


class Profile(Strict):
    compute: Compute
    up_mbps: float = Field(gt=0, description="uplink Mbit/s")
    down_mbps: float = Field(gt=0, description="downlink Mbit/s")
    latency_ms: float = Field(default=0.0, ge=0, description="one way, paid by every message")
    availability: Annotated[AlwaysOn | MarkovOnOff, Field(discriminator="kind")] = AlwaysOn()
    dropout: float = Field(default=0.0, ge=0, lt=1, description="extra per-task drop probability")
    lora_rank: int | None = Field(default=None, ge=1, description="LoRA rank of this class (flexlora, flora)")


class FromFile(Strict):
    file: str


class Trace(Strict):
    file: str
    format: Literal["csv", "fedscale"] = "csv"


class FedScale(Strict):
    capacity: str
    behaviour: str | None = None
    latency_ms: float = Field(default=0.0, ge=0)


def _path(file: str, info: ValidationInfo | None) -> Path:
    base = (info.context or {}).get("base_dir") if info is not None else None
    p = Path(file)
    return p if p.is_absolute() or base is None else Path(base) / p


class Devices(Strict):
    profiles: dict[str, Profile] = Field(default_factory=dict)
    assign: dict[str, float] | FromFile | None = None
    trace: str | Trace | None = None
    fedscale: FedScale | None = None

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, raw: Any, info: ValidationInfo) -> Any:
        """Relative file names become absolute against the scenario file's folder, so the
        validated section means the same files wherever it is dumped and reloaded (a run
        directory, the temporary folder of ``--mode processes``)."""
        base = (info.context or {}).get("base_dir")
        if base is None or not isinstance(raw, dict):
            return raw

        def fix(d: Any, *keys: str) -> Any:
            if not isinstance(d, dict):
                return str(_path(d, info)) if isinstance(d, str) and not keys else d
            return {k: (str(_path(v, info)) if k in keys and isinstance(v, str) else v) for k, v in d.items()}

        out = dict(raw)
        if "assign" in out and isinstance(out["assign"], dict) and "file" in out["assign"]:
            out["assign"] = fix(out["assign"], "file")
        if "trace" in out:
            out["trace"] = fix(out["trace"]) if isinstance(out["trace"], str) else fix(out["trace"], "file")
        if "fedscale" in out:
            out["fedscale"] = fix(out["fedscale"], "capacity", "behaviour")
        return out

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Devices:
        names = list(self.profiles)
        if self.fedscale is not None:
            if self.profiles or self.assign is not None:
                raise ValueError("give either 'fedscale' or 'profiles'/'assign', not both")
            _fedscale_capacity(self.fedscale, info)
            if self.fedscale.behaviour is not None:
                load_fedscale_behaviour(_path(self.fedscale.behaviour, info))
        elif not names:
            raise ValueError("needs 'profiles' (or 'fedscale' traces)")
        if isinstance(self.assign, dict):
            for p in self.assign:
                if p not in self.profiles:
                    raise ValueError(
                        f"assign: unknown profile {p!r}{did_you_mean(p, names)}; known: {', '.join(names)}"
                    )
            bad = {p: f for p, f in self.assign.items() if not 0 <= f <= 1}
            total = sum(self.assign.values())
            if bad or abs(total - 1) > 1e-6:
                raise ValueError(f"assign: fractions must be in [0, 1] and sum to 1, got sum {total:g}")
        elif isinstance(self.assign, FromFile):
            load_profiles_csv(_path(self.assign.file, info), known=names)
        elif self.assign is None and len(names) > 1:
            raise ValueError(f"assign: needed with {len(names)} profiles, e.g. {{{names[0]}: 1.0}}")
        if self.trace is not None:
            _trace(self.trace, info)
        return self


def _trace(trace: str | Trace, info: ValidationInfo | None) -> dict[Any, Windows]:
    t = trace if isinstance(trace, Trace) else Trace(file=trace)
    path = _path(t.file, info)
    if t.format == "csv":
        return load_windows_csv(path)
    return load_fedscale_behaviour(path)


def _availability(trace: str | Trace, names: Sequence[str], info: Any) -> dict[str, Availability]:
    """Per-client availability from a trace: CSV rows name clients; FedScale ids are mapped
    onto the clients as FedScale does (:func:`fedkit.sim.traces.trace_keys_for`)."""
    windows = _trace(trace, info)
    if isinstance(trace, Trace) and trace.format == "fedscale":
        keys = trace_keys_for(names, list(windows))
        return {n: windows[keys[n]] for n in names}
    return dict(windows)


def _fedscale_capacity(f: FedScale, info: ValidationInfo | None) -> dict[Any, FedScaleCapacity]:
    return load_fedscale_capacity(_path(f.capacity, info))


def _spec(a: AlwaysOn | MarkovOnOff) -> AvailabilitySpec:
    return ALWAYS if isinstance(a, AlwaysOn) else MarkovSpec(a.mean_on_s, a.mean_off_s)


def to_profiles(section: Devices) -> dict[str, DeviceProfile]:
    """The section's profiles as :class:`fedkit.sim.devices.DeviceProfile` values."""
    return {
        name: DeviceProfile(
            name, samples_per_s=p.compute.samples_per_s, spread=p.compute.spread,
            up_mbps=p.up_mbps, down_mbps=p.down_mbps, latency_ms=p.latency_ms,
            availability=_spec(p.availability), dropout=p.dropout,
        )
        for name, p in section.profiles.items()
    }


class _Base:
    """A stand-in for pydantic's ValidationInfo so build and validation resolve paths alike."""

    def __init__(self, base_dir: str | Path | None):
        self.context = {"base_dir": base_dir} if base_dir is not None else None


def build_devices(
    section: Devices, client_names: Sequence[str], seed: int, base_dir: str | Path | None = None
) -> dict[str, Device]:
    """Every client's :class:`Device`, deterministic in (section, names, seed).

    Raises ValueError naming the problem when the files do not match the clients (a profile
    table missing a client, a trace listing an unknown one).
    """
    info: Any = _Base(base_dir)
    names = list(client_names)
    trace = _availability(section.trace, names, info) if section.trace is not None else None
    if section.fedscale is not None:
        f = section.fedscale
        beh = load_fedscale_behaviour(_path(f.behaviour, info)) if f.behaviour else None
        devices = fedscale_devices(names, _fedscale_capacity(f, info), beh, seed, f.latency_ms)
        unknown = sorted(set(trace or {}) - set(names))
        if unknown:
            raise ValueError(f"availability trace lists unknown client(s): {', '.join(unknown[:5])}")
        return {n: replace(d, availability=trace[n]) if trace and n in trace else d
                for n, d in devices.items()}
    profiles = to_profiles(section)
    if isinstance(section.assign, FromFile):
        table: dict[str, float] | dict[str, str] = load_profiles_csv(
            _path(section.assign.file, info), known=list(profiles)
        )
    elif isinstance(section.assign, dict):
        table = section.assign
    else:
        table = {next(iter(profiles)): 1.0}
    return assign(names, table, profiles, seed, availability=trace)
