"""The executor a scenario's ``execution:`` section names, for the in-process Link.

``sequential`` is the reference; ``pool`` and ``ray`` run the same client code in other
processes (bit-identical parameters), ``stacked`` trains many small clients as one batched
computation (equal to float tolerance). Workers of ``pool`` and ``ray`` rebuild every client's
data from the scenario text and seed (:func:`scenario_hosts`), so no data is shipped per round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import yaml

from fedkit.runtime.client import ClientHost, hosts
from fedkit.scenario.attacks import client_mods
from fedkit.scenario.build import build_clients
from fedkit.scenario.load import dump, validate
from fedkit.scenario.schema import Execution, Scenario
from fedkit.sim.link import Executor, sequential
from fedkit.types import ClientId


def scenario_hosts(text: str) -> dict[ClientId, ClientHost]:
    """Every client's host, built from a scenario's YAML text: what each worker runs."""
    s = validate(yaml.safe_load(text), "<worker scenario>")
    return hosts(build_clients(s), mods=client_mods(s))


def _sequential(s: Scenario, e: Execution, fleet: Mapping[ClientId, ClientHost]) -> Executor:
    return sequential(fleet)


def _stacked(s: Scenario, e: Execution, fleet: Mapping[ClientId, ClientHost]) -> Executor:
    from fedkit.sim.stacked import Stacked

    return Stacked(fleet)


def _pool(s: Scenario, e: Execution, fleet: Mapping[ClientId, ClientHost]) -> Executor:
    from fedkit.sim.pool import Pool, default_workers

    return Pool(fleet, functools.partial(scenario_hosts, dump(s)), e.workers or default_workers())


def _ray(s: Scenario, e: Execution, fleet: Mapping[ClientId, ClientHost]) -> Executor:
    from fedkit.compat.ray import RayExecutor

    return RayExecutor(fleet, functools.partial(scenario_hosts, dump(s)), e.workers, e.address)


EXECUTORS: dict[str, Callable[[Scenario, Execution, Mapping[ClientId, ClientHost]], Executor]] = {
    "sequential": _sequential,
    "stacked": _stacked,
    "pool": _pool,
    "ray": _ray,
}


def make_executor(s: Scenario, fleet: Mapping[ClientId, ClientHost]) -> Executor:
    """The executor of ``s.execution`` over the driver's client hosts ``fleet``."""
    return EXECUTORS[s.execution.kind](s, s.execution, fleet)
