"""Device files: availability windows and profile tables (CSV), and FedScale's traces.

Availability trace, CSV with a header; one row per online window, times in simulated seconds
from the start of the run; a client may have many rows; ``#`` starts a comment line::

    client,start,end
    client_000,0,600
    client_000,1800,2400.5
    client_001,120,86400

Windows are ``[start, end)``; after its last window a client is offline for good. Overlapping
windows of one client are merged.

Profile table, CSV with a header, one row per client (the ``assign: {file: ...}`` form)::

    client,profile
    client_000,phone
    client_001,rpi4

Every malformed row is reported as ``file:line: what is wrong``, all of them at once.

FedScale (REFERENCES.md G; SymbioticLab/FedScale ``benchmark/dataset/data/device_info``) ships
two pickled dicts keyed by client id: ``client_device_capacity`` = ``{id: {'computation':
ms per sample (inference), 'communication': kbit/s}}`` and ``client_behave_trace`` = ``{id:
{'active': [s], 'inactive': [s], 'finish_time': s, ...}}``, where a client is active iff
``active[i] <= t % finish_time <= inactive[i]`` for some i. Unpickling runs code: load only
files you trust.
"""

from __future__ import annotations

import csv
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkit.sim.availability import Windows, windows
from fedkit.sim.devices import Device, DeviceProfile, assign


class TraceError(ValueError):
    """A device file is malformed; ``problems`` lists ``file:line: message`` strings."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _rows(path: Path, header: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TraceError([f"{path}: file not found"]) from None
    rows = [
        (n, [c.strip() for c in row])
        for n, row in enumerate(csv.reader(text.splitlines()), start=1)
        if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows or tuple(c.lower() for c in rows[0][1]) != header:
        line = rows[0][0] if rows else 1
        raise TraceError([f"{path}:{line}: expected the header {','.join(header)}"])
    return rows[1:]


def load_windows_csv(path: str | Path) -> dict[str, Windows]:
    """Read an availability trace (format above) into ``{client: Windows}``."""
    path = Path(path)
    spans: dict[str, list[tuple[float, float]]] = {}
    problems = []
    for line, row in _rows(path, ("client", "start", "end")):
        where = f"{path}:{line}"
        if len(row) != 3 or not row[0]:
            problems.append(f"{where}: expected 3 fields client,start,end, got {len(row)}: {row}")
            continue
        try:
            start, end = float(row[1]), float(row[2])
        except ValueError:
            problems.append(f"{where}: start and end must be numbers of seconds, got {row[1:]}")
            continue
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            problems.append(f"{where}: need 0 <= start < end, got start={start:g} end={end:g}")
            continue
        spans.setdefault(row[0], []).append((start, end))
    if problems:
        raise TraceError(problems)
    return {c: windows(s) for c, s in spans.items()}


def load_profiles_csv(path: str | Path, known: Sequence[str] | None = None) -> dict[str, str]:
    """Read a per-client profile table into ``{client: profile}``; with ``known`` every profile
    must be one of them."""
    path = Path(path)
    out: dict[str, str] = {}
    problems = []
    for line, row in _rows(path, ("client", "profile")):
        where = f"{path}:{line}"
        if len(row) != 2 or not row[0] or not row[1]:
            problems.append(f"{where}: expected 2 fields client,profile, got {row}")
        elif row[0] in out:
            problems.append(f"{where}: client {row[0]!r} listed twice")
        elif known is not None and row[1] not in known:
            problems.append(f"{where}: unknown profile {row[1]!r}; known: {', '.join(known)}")
        else:
            out[row[0]] = row[1]
    if problems:
        raise TraceError(problems)
    return out


@dataclass(frozen=True)
class FedScaleCapacity:
    """One FedScale device: ``samples_per_s`` = 1000 / inference ms per sample; bandwidth in
    Mbit/s = kbit/s / 1000 (the trace has one figure for both directions)."""

    samples_per_s: float
    mbps: float


def _unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        raise TraceError([f"{path}: file not found"]) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise TraceError([f"{path}: not a FedScale pickle: {e}"]) from None


def load_fedscale_capacity(path: str | Path) -> dict[Any, FedScaleCapacity]:
    path = Path(path)
    raw = _unpickle(path)
    if not isinstance(raw, Mapping):
        raise TraceError([f"{path}: expected a dict {{client_id: {{computation, communication}}}}"])
    out, problems = {}, []
    for cid, entry in raw.items():
        try:
            ms, kbps = float(entry["computation"]), float(entry["communication"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: client {cid!r}: needs numeric 'computation' and 'communication'")
            continue
        if not (ms > 0 and kbps > 0 and math.isfinite(ms) and math.isfinite(kbps)):
            problems.append(f"{path}: client {cid!r}: computation and communication must be > 0")
            continue
        out[cid] = FedScaleCapacity(samples_per_s=1000.0 / ms, mbps=kbps / 1000.0)
    if problems:
        raise TraceError(problems)
    return out


def load_fedscale_behaviour(path: str | Path) -> dict[Any, Windows]:
    """``client_behave_trace`` as periodic :class:`Windows` (period = ``finish_time``)."""
    path = Path(path)
    raw = _unpickle(path)
    if not isinstance(raw, Mapping):
        raise TraceError([f"{path}: expected a dict {{client_id: {{active, inactive, finish_time}}}}"])
    out, problems = {}, []
    for cid, entry in raw.items():
        try:
            active, inactive = list(entry["active"]), list(entry["inactive"])
            period = float(entry["finish_time"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: client {cid!r}: needs 'active', 'inactive' and 'finish_time'")
            continue
        if len(active) != len(inactive):
            problems.append(
                f"{path}: client {cid!r}: {len(active)} 'active' but {len(inactive)} 'inactive' times"
            )
            continue
        try:  # zero-length windows are dropped; a window running past finish_time is cut there
            pairs = [(float(a), min(float(b), period)) for a, b in zip(active, inactive, strict=True)]
            out[cid] = windows([(a, b) for a, b in pairs if a != b], period=period)
        except ValueError as e:
            problems.append(f"{path}: client {cid!r}: {e}")
    if problems:
        raise TraceError(problems)
    return out


def trace_keys_for(names: Sequence[str], keys: Sequence[Any]) -> dict[str, Any]:
    """Map client names onto trace ids as FedScale does: the i-th client (in the given order)
    takes the i-th id in sorted order, cycling when there are more clients than ids."""
    if not keys:
        raise ValueError("the trace has no clients")
    ordered = sorted(keys, key=lambda k: (str(type(k)), k))
    return {name: ordered[i % len(ordered)] for i, name in enumerate(names)}


def fedscale_devices(
    names: Sequence[str],
    capacity: Mapping[Any, FedScaleCapacity],
    behaviour: Mapping[Any, Windows] | None,
    seed: int,
    latency_ms: float = 0.0,
) -> dict[str, Device]:
    """Devices from FedScale's traces: one profile per trace id (``fedscale:<id>``), clients
    mapped onto ids by :func:`trace_keys_for`; with ``behaviour`` its windows are the clients'
    availability (ids missing from it stay always online). The trace has no latency."""
    keys = trace_keys_for(names, list(capacity))
    profiles = {
        f"fedscale:{k}": DeviceProfile(
            f"fedscale:{k}", samples_per_s=c.samples_per_s, up_mbps=c.mbps, down_mbps=c.mbps,
            latency_ms=latency_ms,
        )
        for k, c in capacity.items()
    }
    table = {n: f"fedscale:{keys[n]}" for n in names}
    avail = {n: behaviour[keys[n]] for n in names if behaviour and keys[n] in behaviour}
    return assign(names, table, profiles, seed, availability=avail)
