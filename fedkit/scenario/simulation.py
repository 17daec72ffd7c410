"""A scenario's simulated devices: the cost of every task, partial work, the population table.

One home for what ``devices:`` turns into, so the in-process simulation, ``--mode processes``
(:class:`fedkit.sim.clocked.ClockedLink` in the server process) and ``fedkit describe`` all
charge the same seconds: every client's :class:`~fedkit.sim.devices.Device` (keyed by the
scenario's seed and the client's name) and its number of training samples (from the
scenario's partition, which the server can recompute: it is a pure function of the scenario).

In a real deployment (``fedkit server`` without ``--simulate``) the clock is real, and the
clients' own connectivity, speed and failures replace availability, dropout and the cost
model; the devices section is used there only by ``server.stragglers: partial``, whose step
budgets take each profile as the device's declared speed and bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedkit.compression.frame import packed_nbytes
from fedkit.runtime.policy import Sampling
from fedkit.scenario.build import client_names, load_data
from fedkit.scenario.devices import build_devices
from fedkit.scenario.schema import Scenario
from fedkit.sim.cost import DeviceCost, PartialWork, local_samples
from fedkit.sim.devices import Device, summarize, task_time
from fedkit.types import ClientId, Encoded, Params


@dataclass(frozen=True)
class Simulation:
    devices: dict[ClientId, Device]
    sizes: dict[ClientId, int]
    cost: DeviceCost

    def online(self, client: ClientId, t: float) -> bool:
        return self.cost.online(client, t)


def data_sizes(s: Scenario) -> dict[ClientId, int]:
    """Each client's number of training samples, as the scenario's partition gives them."""
    _, parts = load_data(s)
    return dict(zip(client_names(len(parts)), (len(p) for p in parts), strict=True))


def simulation(s: Scenario, sizes: dict[ClientId, int] | None = None) -> Simulation | None:
    """The scenario's devices and task costs; None without a ``devices:`` section."""
    if s.devices is None:
        return None
    sizes = data_sizes(s) if sizes is None else dict(sizes)
    devices = build_devices(s.devices, list(sizes), s.seed)
    return Simulation(devices, sizes, DeviceCost(devices, sizes, s.seed))


def uplink_bound(s: Scenario, params: Params) -> int:
    """Bytes of an update before it exists: the model as an uncompressed float32 frame."""
    return Encoded(s.compression.uplink, b"").nbytes + packed_nbytes(params, itemsize=4)


def partial_work(s: Scenario, sim: Simulation, params: Params) -> PartialWork | None:
    """FedProx's partial work when ``server.stragglers: partial`` (budget: the deadline)."""
    if s.server.stragglers != "partial" or s.server.deadline_s is None:
        return None
    return PartialWork(sim.devices, sim.sizes, s.server.deadline_s, uplink_bound(s, params))


def describe_devices(s: Scenario, params: Params) -> dict[str, float | int | str] | None:
    """The device population for ``fedkit describe``: speed, bandwidth and latency quantiles,
    online fraction, and the time of one training task per client for the scenario's model
    (sent and returned as float32 frames); None without devices."""
    sim = simulation(s)
    if sim is None:
        return None
    train = s.train
    samples = {c: float(local_samples(n, train)) for c, n in sim.sizes.items()}
    nbytes = uplink_bound(s, params)
    out = summarize(sim.devices, samples, nbytes, nbytes)
    times = [task_time(sim.devices[c], samples[c], nbytes, nbytes).total_s for c in sorted(samples)]
    per = s.clients.per_round
    k = Sampling(s.seed, per.fraction if per.count is None else None, per.count, per.min).size(len(times))
    out[f"round s ({k} sampled, expected)"] = expected_round_s(times, k, s.server.deadline_s)
    return out


def expected_round_s(times: list[float], k: int, deadline_s: float | None = None) -> float:
    """Expected length of a synchronous round that waits for ``k`` clients drawn uniformly
    without replacement (the slowest of them), cut at ``deadline_s``: the order statistic
    P(max is the i-th smallest) = C(i-1, k-1) / C(n, k)."""
    ts = sorted(min(t, deadline_s) if deadline_s is not None else t for t in times)
    n = len(ts)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= {n} clients, got {k}")
    log_all = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    total = 0.0
    for i in range(k, n + 1):
        log_p = math.lgamma(i) - math.lgamma(k) - math.lgamma(i - k + 1) - log_all
        total += ts[i - 1] * math.exp(log_p)
    return total
