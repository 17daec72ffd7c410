"""Device heterogeneity: profiles, each client's concrete device, and what a task costs it.

Completion time follows FedScale (Lai et al., OSDI 2022, "FedScale: Benchmarking Model and
System Performance of Federated Learning at Scale"; REFERENCES.md G) as one pure function:

    compute_s = samples x TRAIN_COST / samples_per_s
    down_s    = latency + bytes_down x 8 / (down_mbps x 1e6)
    up_s      = latency + bytes_up   x 8 / (up_mbps   x 1e6)
    total_s   = down_s + compute_s + up_s

Cost model: ``samples_per_s`` is *inference* (forward-pass) throughput, the unit of FedScale's
capacity trace (ms per sample); a training sample costs ``TRAIN_COST = 3`` forward passes
(forward + backward ~ 2x forward), FedScale's ``augmentation_factor``. ``samples`` is every
sample processed (epochs x local data, or steps x batch size). ``latency_ms`` is one-way and is
paid by every message, so one task pays a round-trip. Bytes are what the codec actually encoded
(``Encoded.nbytes``).

Each client's speed is drawn once, log-normally around its profile's ``samples_per_s`` (the
median): ``speed = samples_per_s x exp(spread x z)``, ``z ~ N(0, 1)`` keyed by (seed, client);
``spread`` is the sigma of log speed (0.5 gives ~5x between the 5th and 95th percentile).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedkit import rng as frng
from fedkit.sim.availability import (
    ALWAYS,
    Availability,
    AvailabilitySpec,
    online_fraction,
)

TRAIN_COST = 3.0
"""Forward-pass equivalents per training sample (forward + backward)."""


def _positive(what: str, v: float, zero_ok: bool = False) -> None:
    ok = math.isfinite(v) and (v >= 0 if zero_ok else v > 0)
    if not ok:
        raise ValueError(f"{what} must be {'>= 0' if zero_ok else '> 0'}, got {v!r}")


@dataclass(frozen=True)
class DeviceProfile:
    """A named class of devices (``phone``, ``rpi4``) as a scenario's ``devices.profiles``."""

    name: str
    samples_per_s: float
    up_mbps: float
    down_mbps: float
    latency_ms: float = 0.0
    spread: float = 0.0
    availability: AvailabilitySpec = ALWAYS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        p = f"device profile {self.name!r}: "
        _positive(p + "samples_per_s", self.samples_per_s)
        _positive(p + "up_mbps", self.up_mbps)
        _positive(p + "down_mbps", self.down_mbps)
        _positive(p + "latency_ms", self.latency_ms, zero_ok=True)
        _positive(p + "spread", self.spread, zero_ok=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{p}dropout must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class Device:
    """One client's concrete device: its profile's figures with its own drawn speed and its own
    availability timeline."""

    client: str
    profile: str
    samples_per_s: float
    up_mbps: float
    down_mbps: float
    latency_ms: float
    availability: Availability
    dropout: float


def draw_device(profile: DeviceProfile, client: str, seed: int) -> Device:
    """The client's device: speed drawn log-normally from ``spread``, keyed by (seed, client)."""
    z = frng.rng(seed, "device-speed", client).standard_normal()
    return Device(
        client=client,
        profile=profile.name,
        samples_per_s=profile.samples_per_s * math.exp(profile.spread * z),
        up_mbps=profile.up_mbps,
        down_mbps=profile.down_mbps,
        latency_ms=profile.latency_ms,
        availability=profile.availability.for_client(seed, client),
        dropout=profile.dropout,
    )


def _unknown(word: str, options: Sequence[str], what: str) -> ValueError:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {what} {word!r}{hint}; known: {', '.join(options)}")


def largest_remainder(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Counts summing to ``n`` closest to ``n x fraction`` (Hamilton's method); ties in the
    remainder go to the profile listed first."""
    total = sum(fractions.values())
    if any(not (math.isfinite(f) and f >= 0) for f in fractions.values()) or abs(total - 1) > 1e-6:
        raise ValueError(f"device fractions must be >= 0 and sum to 1, got {dict(fractions)} (sum {total:g})")
    exact = {k: n * f for k, f in fractions.items()}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    order = sorted(exact, key=lambda k: -(exact[k] - counts[k]))  # stable: listed order on ties
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def assign(
    names: Sequence[str],
    assignment: Mapping[str, float] | Mapping[str, str],
    profiles: Mapping[str, DeviceProfile],
    seed: int,
    availability: Mapping[str, Availability] | None = None,
) -> dict[str, Device]:
    """Give every client a device.

    ``assignment`` is either fractions per profile (``{phone: 0.7, rpi4: 0.3}``) or a table
    per client (``{client_000: phone, ...}``, every client listed). Fractions become exact
    counts by largest remainder; which clients get which profile is a permutation of the
    sorted names keyed by (seed, "device-assign"), profiles filled in listed order. So the
    same names and seed always give the same devices, whatever order ``names`` come in.
    ``availability`` (a trace) overrides the profile's availability for the clients it lists.
    """
    if not profiles:
        raise ValueError("no device profiles")
    known = list(profiles)
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("client names must be unique")
    values = list(assignment.values())
    if values and all(isinstance(v, str) for v in values):
        table = {str(c): str(p) for c, p in assignment.items()}
        missing = [c for c in ordered if c not in table]
        extra = sorted(set(table) - set(ordered))
        if missing:
            raise ValueError(f"device table lacks {len(missing)} client(s): {', '.join(missing[:5])}")
        if extra:
            raise ValueError(f"device table lists unknown client(s): {', '.join(extra[:5])}")
    else:
        fractions = {str(k): float(v) for k, v in assignment.items()}  # type: ignore[arg-type]
        for p in fractions:
            if p not in profiles:
                raise _unknown(p, known, "device profile")
        counts = largest_remainder(len(ordered), fractions)
        perm = frng.rng(seed, "device-assign").permutation(len(ordered))
        table, i = {}, 0
        for p, k in counts.items():
            for j in perm[i : i + k]:
                table[ordered[int(j)]] = p
            i += k
    for c in ordered:
        if table[c] not in profiles:
            raise _unknown(table[c], known, f"device profile for client {c!r}:")
    extra_av = sorted(set(availability or {}) - set(ordered))
    if extra_av:
        raise _unknown(extra_av[0], ordered, "client in the availability trace:")
    out = {}
    for c in ordered:
        d = draw_device(profiles[table[c]], c, seed)
        if availability and c in availability:
            d = replace(d, availability=availability[c])
        out[c] = d
    return out


@dataclass(frozen=True)
class TaskTime:
    compute_s: float
    down_s: float
    up_s: float
    total_s: float


def _wire_s(nbytes: int, mbps: float, latency_ms: float) -> float:
    if nbytes < 0:
        raise ValueError(f"byte counts must be >= 0, got {nbytes}")
    return latency_ms / 1000.0 + nbytes * 8.0 / (mbps * 1e6)


def task_time(
    device: Device, samples: float, bytes_down: int, bytes_up: int, cost: float = TRAIN_COST
) -> TaskTime:
    """Seconds one task takes on ``device`` (formula in the module docstring); pure."""
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    compute = samples * cost / device.samples_per_s
    down = _wire_s(bytes_down, device.down_mbps, device.latency_ms)
    up = _wire_s(bytes_up, device.up_mbps, device.latency_ms)
    return TaskTime(compute, down, up, down + compute + up)


def steps_within(
    device: Device,
    budget_s: float,
    samples_per_step: int,
    max_steps: int,
    bytes_down: int,
    bytes_up: int,
    cost: float = TRAIN_COST,
) -> int:
    """How many local steps (of ``samples_per_step`` samples) fit in ``budget_s`` once the
    downlink and uplink are paid, in ``[0, max_steps]``: FedProx's partial work for stragglers
    (Li et al., MLSys 2020). 0 means the client cannot even send an untrained reply in time."""
    if samples_per_step < 1 or max_steps < 0:
        raise ValueError("samples_per_step must be >= 1 and max_steps >= 0")
    fixed = task_time(device, 0, bytes_down, bytes_up).total_s
    step = samples_per_step * cost / device.samples_per_s
    left = budget_s - fixed
    if left < 0:
        return 0
    n = min(max_steps, int(math.floor(left / step)))
    while n > 0 and fixed + n * step > budget_s:  # float floor can overshoot by one
        n -= 1
    return n


@dataclass(frozen=True)
class Fate:
    """What happens to a task: ``ok`` (reply at ``at_s``), ``offline`` (not online at the start),
    ``left`` (went offline at ``at_s`` mid-task) or ``dropout`` (the profile's per-task drop)."""

    reason: str
    at_s: float

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def fate(device: Device, seed: int, rnd: int, start_s: float, duration_s: float) -> Fate:
    """Whether a task started at ``start_s`` and lasting ``duration_s`` completes; the extra
    dropout draw is keyed by (seed, round, client)."""
    av = device.availability
    if not av.online(start_s):
        return Fate("offline", start_s)
    end = start_s + duration_s
    change = av.next_change(start_s)
    if change < end:
        return Fate("left", change)
    if device.dropout > 0 and frng.rng(seed, "dropout", rnd, device.client).random() < device.dropout:
        return Fate("dropout", end)
    return Fate("ok", end)


def _quantiles(prefix: str, values: Sequence[float]) -> dict[str, float]:
    q = np.quantile(np.asarray(values, dtype=float), [0.1, 0.5, 0.9])
    return {f"{prefix} p10": float(q[0]), f"{prefix} p50": float(q[1]), f"{prefix} p90": float(q[2])}


def summarize(
    devices: Mapping[str, Device],
    samples: Mapping[str, float] | float,
    bytes_down: int,
    bytes_up: int,
    horizon_s: float = 86_400.0,
) -> dict[str, float | int | str]:
    """The device population for ``fedkit describe``: speed, bandwidth and latency quantiles,
    mean online fraction over ``[0, horizon_s)``, and the time of one task per client (model
    down, ``samples`` trained, update up); a synchronous round with every client waits for the
    slowest ("round s max")."""
    if not devices:
        raise ValueError("no devices to summarise")
    ds = [devices[c] for c in sorted(devices)]
    per = samples if isinstance(samples, Mapping) else {d.client: samples for d in ds}
    times = [task_time(d, per[d.client], bytes_down, bytes_up).total_s for d in ds]
    profiles: dict[str, int] = {}
    for d in ds:
        profiles[d.profile] = profiles.get(d.profile, 0) + 1
    out: dict[str, float | int | str] = {
        "clients": len(ds),
        "profiles": ", ".join(f"{p}={n}" for p, n in profiles.items()),
    }
    out |= _quantiles("speed samples/s", [d.samples_per_s for d in ds])
    out |= _quantiles("down Mbit/s", [d.down_mbps for d in ds])
    out |= _quantiles("up Mbit/s", [d.up_mbps for d in ds])
    out |= _quantiles("latency ms", [d.latency_ms for d in ds])
    out["online fraction"] = float(np.mean([online_fraction(d.availability, 0.0, horizon_s) for d in ds]))
    out |= _quantiles("task s", times)
    out["round s max"] = float(max(times))
    return out
