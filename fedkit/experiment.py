"""Run a scenario end to end and leave a run directory behind; used by the CLI and tests.

Modes differ only in the Link handed to the shared round engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.aggregation import state_from_arrays, state_to_arrays
from fedkit.models import build_model, set_params
from fedkit.report import plots
from fedkit.report.run_dir import RunDir, check_can_start, load_params, summarize
from fedkit.runtime.client import ClientHost, ClientState, hosts
from fedkit.runtime.downlink import DownlinkState
from fedkit.runtime.link import Link
from fedkit.runtime.server import Plan, RoundRecord, ServerState, run
from fedkit.runtime.task import ModelRef
from fedkit.scenario import Scenario, dump
from fedkit.scenario.build import build, initial_state
from fedkit.scenario.execution import make_executor
from fedkit.sim.link import CostFn, Executor, InProcessLink
from fedkit.types import ClientId, Params

RoundCallback = Callable[[Mapping[str, Any]], None]


def inprocess_link(
    clients: Mapping[ClientId, ClientState],
    cost: CostFn | None = None,
    executor: Callable[[Mapping[ClientId, ClientHost]], Executor] | None = None,
) -> Link:
    """``executor(hosts)``: how the clients run (default: one after another, in this process)."""
    fleet = hosts(clients)  # one module shared by every simulated client
    return InProcessLink(fleet, cost, executor=None if executor is None else executor(fleet))


def resume_state(plan: Plan, init_params: Params, rd: RunDir, resume: bool) -> ServerState:
    """The state to start from: the checkpoint's (logs repaired to agree with it) or round 0."""
    if not resume:
        return initial_state(plan, init_params)
    rd.repair()
    ck = rd.read_checkpoint()
    if ck is None:
        return initial_state(plan, init_params)
    sec = ck.sections
    return ServerState(
        ck.round,
        ck.params,
        state_from_arrays(sec.get("agg", {})),
        DownlinkState.from_arrays(sec.get("down", {})),
        int(sec.get("engine", {}).get("version", ck.round)),
    )


def run_with_link(
    scenario: Scenario,
    plan: Plan,
    init_params: Params,
    link: Link,
    out: str | Path,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the plan's remaining rounds over ``link``, recording into the run directory ``out``.

    A directory that already holds a run is refused unless ``resume`` or ``overwrite``. Each
    round commits its checkpoint (with its log rows) before appending the logs, so a crash at
    any instant leaves a directory that ``resume`` continues without repeating a round.
    """
    s = scenario
    rd = RunDir(out, resume=resume, overwrite=overwrite)
    rd.write_scenario(dump(s))
    rd.write_json("model.json", plan.model.model_dump(mode="json"))
    state = resume_state(plan, init_params, rd, resume)
    t_start = time.perf_counter()
    elapsed0 = rd.metrics()[-1].get("elapsed_s", 0.0) if resume and rd.metrics() else 0.0

    def record(st: ServerState, rec: RoundRecord) -> None:
        row = rec.row() | {"elapsed_s": elapsed0 + time.perf_counter() - t_start}
        if s.output.checkpoint:
            sections = {
                "agg": state_to_arrays(st.agg_state),
                "down": st.downlink.to_arrays(),
                "engine": {"version": np.array(st.version)},
            }
            rd.write_checkpoint(st.round, st.params, sections, {"metrics": row, "clients": rec.clients})
        rd.append_rows(row, rec.clients)
        if on_round is not None:
            on_round(row)

    final = run(plan, link, state, record)
    rows = rd.metrics()
    summary = summarize(rows, final.params, s.seed, s.name)
    rd.write_final(final.params, summary)
    if s.output.plot:
        plots.curves(rows, rd.path / "curves.png", title=s.name)
    return summary


def run_scenario(
    scenario: Scenario,
    out: str | Path,
    mode: str = "inprocess",
    on_round: RoundCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run a scenario in-process or as local processes over gRPC; returns the summary.
    ``force``: resume even though the scenario differs from the run's."""
    if mode == "processes":
        from fedkit.launch import run_processes

        return run_processes(scenario, out, workers, on_round, resume, overwrite, force)
    if mode != "inprocess":
        raise ValueError(f"unknown mode {mode!r}; known: inprocess, processes")
    check_can_start(out, resume, overwrite, dump(scenario), force)
    torch.set_num_threads(1)  # the kernels every mode uses: bit-identical params across modes
    exp = build(scenario)
    link = inprocess_link(exp.clients, executor=lambda fleet: make_executor(scenario, fleet))
    try:
        return run_with_link(scenario, exp.plan, exp.init_params, link, out, on_round, resume, overwrite)
    finally:
        link.close()


def load_model(run_dir: str | Path) -> torch.nn.Module:
    """The trained model of a run directory (its final params, else its last checkpoint)."""
    path = Path(run_dir)
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: no model.json (not a fedkit run directory?)")
    ref = ModelRef.model_validate(json.loads((path / "model.json").read_text()))
    source = path / "params.npz" if (path / "params.npz").exists() else path / "checkpoint.npz"
    if not source.exists():
        raise FileNotFoundError(f"{path}: neither params.npz nor checkpoint.npz")
    params, _ = load_params(source)
    module = build_model(ref.spec, ref.input_shape, ref.num_classes)
    set_params(module, params)
    return module.eval()
