"""The two deployable roles: a gRPC server that runs a scenario's rounds, and a client that
serves tasks from its own data. ``clients/`` and ``server/`` are thin wrappers around these.

The server uses the very round engine of the in-process simulation; only the Link differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedkit.compression.limits import payload_bytes
from fedkit.experiment import RoundCallback, resumed_clock, run_with_link
from fedkit.report.run_dir import check_can_start
from fedkit.runtime.accept import Rejected, accept
from fedkit.runtime.client import ClientHost, load_client_data
from fedkit.runtime.link import Link
from fedkit.scenario import Scenario, dump
from fedkit.scenario.build import build_server
from fedkit.scenario.simulation import simulation
from fedkit.sim.clocked import ClockedLink
from fedkit.transport.client import DEFAULT_WAIT_S, SplitDialer, run_client
from fedkit.transport.security import Authenticator, ClientTls, ServerTls
from fedkit.transport.server import GrpcServer
from fedkit.types import Reply, Task

log = logging.getLogger("fedkit.deploy")


@dataclass(frozen=True)
class ServerOptions:
    listen: str = "127.0.0.1:0"
    tls: ServerTls | None = None
    auth: Authenticator | None = None
    insecure: bool = False
    min_clients: int | None = None  # connected clients needed before round 1 (default: all)
    wait_timeout_s: float | None = None
    max_message_bytes: int | None = None
    port_file: str | None = None
    max_sessions: int | None = None  # concurrent sessions the server admits (default: no cap)
    simulate: bool = False  # charge the scenario's devices on a simulated clock (--mode processes)
    max_payload_bytes: int | None = None  # largest reply payload (default: from the model)


def serve(
    scenario: Scenario,
    out: str | Path,
    opts: ServerOptions,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the scenario's rounds with clients that connect over gRPC; returns the summary.
    ``say`` gets the operator's progress lines (listening address, clients connected)."""
    say = say or (lambda msg: log.info("%s", msg))
    check_can_start(out, resume, overwrite, dump(scenario), force)  # before clients wait
    torch.set_num_threads(1)
    plan, init_params = build_server(scenario)  # no client's data: the devices hold it
    if not opts.simulate:  # real devices on the real clock: a hung one sits out (server.bench_after)
        plan = dataclasses.replace(plan, bench_after=scenario.server.bench_after)

    def validate(task: Task, reply: Reply) -> Any:
        """The engine's acceptance rule, run while the reply is on the wire: a bad reply is
        refused with INVALID_ARGUMENT, and a good one is decoded once, here."""
        if reply.error is not None:
            return None  # the client's own failure reaches the engine as such
        try:
            return accept(plan.acceptance, task, reply)
        except Rejected as e:
            raise ValueError(str(e)) from None

    # the largest valid update for this model, whatever the codec: bigger replies are refused
    # before anything is buffered (a 19 KB model no longer accepts a 4 GiB stream)
    cap = opts.max_payload_bytes or payload_bytes(plan.acceptance.layout)
    extra: dict[str, Any] = {}
    if plan.split is not None:  # split learning: the Split streams reach the plan's endpoint
        extra["split"] = plan.split.endpoint
    from fedkit.peft.join import admit_base  # a device with another pre-trained base is refused

    server = GrpcServer(
        opts.listen, tls=opts.tls, auth=opts.auth, validate=validate, insecure=opts.insecure,
        admit=admit_base(plan.model.spec.get("base_sha256")),
        max_sessions=opts.max_sessions, max_message_bytes=opts.max_message_bytes, max_payload_bytes=cap,
        **extra,
    )
    port = server.start()
    host = opts.listen.rsplit(":", 1)[0]
    say(f"listening on {host}:{port} ({'TLS' if opts.tls else 'plaintext'})")
    if opts.port_file:
        tmp = Path(opts.port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(opts.port_file)
    try:
        need = opts.min_clients or scenario.clients.count
        names = _wait_for_clients(server, need, opts.wait_timeout_s or 7 * 24 * 3600.0, say)
        say(f"{len(names)} clients connected; starting {scenario.rounds} rounds")
        link: Link = server.link
        sim = simulation(scenario) if opts.simulate else None
        if sim is not None:  # real clients, simulated time: the same times as in-process
            wait = max(600.0, scenario.server.deadline_s or 0.0)
            link = ClockedLink(link, sim.cost, sim.online, wait, resumed_clock(out, resume))
        return run_with_link(scenario, plan, init_params, link, out, on_round, resume, overwrite)
    finally:
        server.shutdown_clients()
        server.stop()


def _wait_for_clients(server: GrpcServer, need: int, timeout_s: float, say: Callable[[str], None]) -> list[str]:
    """Wait for ``need`` clients, saying how many are there whenever that changes."""
    end, seen = time.monotonic() + timeout_s, -1
    while True:
        names = server.clients()
        if len(names) != seen:
            seen = len(names)
            say(f"{seen}/{need} clients connected")
        if seen >= need:
            return names
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {seen} of {need} clients connected in {timeout_s:g} s")
        with contextlib.suppress(TimeoutError):  # wakes as soon as one more joins
            server.wait_for_clients(seen + 1, min(left, 30.0))


@dataclass(frozen=True)
class LocalClient:
    """One client a device process serves: its name, its data file and its token."""

    name: str
    data: str | Path
    token: str | None = None


def join(
    address: str,
    clients: Sequence[LocalClient],
    *,
    tls: ClientTls | None = None,
    insecure: bool = False,
    stop: threading.Event | None = None,
    wait_s: float | None = DEFAULT_WAIT_S,
    capabilities: Mapping[str, str] | None = None,
) -> None:
    """Serve tasks for one or more local clients until the server is done.
    ``capabilities`` go with every Join (e.g. the base model's hash, fedkit/peft/join.py).

    Several clients in one process each get a thread and their own model instance. A client
    that cannot join for ``wait_s`` seconds raises ConnectionError (None: keep trying).
    """
    torch.set_num_threads(1)  # the same kernels as the in-process simulation
    states = [(load_client_data(c.data, c.name), c.token) for c in clients]
    errors: list[BaseException] = []

    def one(state: Any, token: str | None) -> None:
        dialer = SplitDialer()  # split tasks open their Split stream on this client's session
        try:
            run_client(
                address, ClientHost(state, connect=dialer), name=state.id, token=token, tls=tls,
                insecure=insecure, stop=stop, wait_s=wait_s, split=dialer, capabilities=capabilities,
            )
        except BaseException as e:  # reported after every thread has finished
            errors.append(e)

    threads = [threading.Thread(target=one, args=st, daemon=True) for st in states]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
