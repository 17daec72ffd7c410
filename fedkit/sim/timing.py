"""Who finishes a synchronous round, and when: FedScale's deadline rule as one pure function.

A synchronous round sends every sampled client a task at ``start_s``; each takes
``task_time`` on its device (``fedkit.sim.devices``) unless it is offline, leaves mid-task or
drops (``fate``). The round keeps the first ``keep`` clients to finish (over-selection: sample
ceil(1.3 K), keep K, as FedScale/Oort do) that finish by the deadline. Late clients are
``drop``-ped (FedAvg, McMahan et al. 2017) or, with ``partial``, do the local steps that fit
before the deadline (FedProx's systems heterogeneity, Li et al., MLSys 2020). Completion ties
break by client name, as in :class:`fedkit.sim.clock.EventQueue` with key ``(client,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fedkit.sim.devices import Device, fate, steps_within, task_time


@dataclass(frozen=True)
class Work:
    """One client's task: ``steps`` local steps of ``batch`` samples, and the bytes each way."""

    steps: int
    batch: int
    bytes_down: int
    bytes_up: int


@dataclass(frozen=True)
class Outcome:
    client: str
    reason: Literal["ok", "partial", "late", "offline", "left", "dropout", "surplus"]
    steps: int  # steps the reply carries (0 when there is no reply)
    at_s: float  # reply time, or when the client was lost


@dataclass(frozen=True)
class RoundTiming:
    outcomes: tuple[Outcome, ...]  # in arrival order, then the lost ones by client name
    end_s: float  # when the server stops waiting

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(o.client for o in self.outcomes if o.reason in ("ok", "partial"))


def round_timing(
    devices: Mapping[str, Device],
    work: Mapping[str, Work],
    seed: int,
    rnd: int,
    start_s: float = 0.0,
    deadline_s: float | None = None,
    keep: int | None = None,
    stragglers: Literal["drop", "partial"] = "drop",
) -> RoundTiming:
    """Outcomes of one synchronous round started at ``start_s``.

    The round ends when ``keep`` replies are in (all of the replying clients when None), or at
    ``start_s + deadline_s``, whichever is first. With ``partial`` a late client whose device
    can fit at least one step before the deadline replies at the deadline with those steps.
    """
    if stragglers not in ("drop", "partial"):
        raise ValueError(f"stragglers must be 'drop' or 'partial', got {stragglers!r}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if deadline_s is not None and not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    limit = math.inf if deadline_s is None else start_s + deadline_s
    arrivals: list[Outcome] = []
    lost: list[Outcome] = []
    for c in sorted(work):
        if c not in devices:
            raise ValueError(f"no device for client {c!r}")
        d, w = devices[c], work[c]
        full = task_time(d, w.steps * w.batch, w.bytes_down, w.bytes_up).total_s
        f = fate(d, seed, rnd, start_s, full)
        if f.reason == "ok" and f.at_s <= limit:
            arrivals.append(Outcome(c, "ok", w.steps, f.at_s))
        elif f.reason == "ok" and stragglers == "partial":
            n = steps_within(d, limit - start_s, w.batch, w.steps, w.bytes_down, w.bytes_up)
            done = start_s + task_time(d, n * w.batch, w.bytes_down, w.bytes_up).total_s
            if n > 0 and fate(d, seed, rnd, start_s, done - start_s).ok:
                arrivals.append(Outcome(c, "partial", n, done))
            else:
                lost.append(Outcome(c, "late", 0, limit))
        elif f.reason == "ok":
            lost.append(Outcome(c, "late", 0, f.at_s))
        else:
            lost.append(Outcome(c, f.reason, 0, f.at_s))  # type: ignore[arg-type]
    arrivals.sort(key=lambda o: (o.at_s, o.client))
    if keep is not None and len(arrivals) > keep:
        surplus = [Outcome(o.client, "surplus", 0, o.at_s) for o in arrivals[keep:]]
        arrivals, lost = arrivals[:keep], surplus + lost
    if keep is not None and len(arrivals) == keep:
        end = arrivals[-1].at_s
    elif math.isfinite(limit):
        end = limit
    else:
        end = max([o.at_s for o in arrivals], default=start_s)
    return RoundTiming(tuple(arrivals) + tuple(sorted(lost, key=lambda o: o.client)), end)
