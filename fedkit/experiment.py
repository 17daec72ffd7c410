"""Run a scenario end to end and leave a run directory behind; used by the CLI and tests.

Modes differ only in the Link handed to the shared round engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedkit.aggregation import state_from_arrays, state_to_arrays
from fedkit.report import plots
from fedkit.report.run_dir import RunDir, check_can_start, summarize
from fedkit.runtime.client import ModelCache, make_client_fn
from fedkit.runtime.downlink import DownlinkState
from fedkit.runtime.link import Link
from fedkit.runtime.server import RoundRecord, ServerState, run
from fedkit.scenario import Scenario, dump
from fedkit.scenario.build import Experiment, build
from fedkit.sim.link import InProcessLink

RoundCallback = Callable[[Mapping[str, Any]], None]


def inprocess_link(exp: Experiment) -> Link:
    models = ModelCache()  # one module shared by every simulated client
    return InProcessLink({cid: make_client_fn(c, models) for cid, c in exp.clients.items()})


def initial_state(exp: Experiment, rd: RunDir, resume: bool) -> ServerState:
    ckpt = rd.read_checkpoint() if resume else None
    if ckpt is None:
        return exp.initial_state()
    rnd, params, sections = ckpt
    return ServerState(
        rnd,
        params,
        state_from_arrays(sections.get("agg", {})),
        DownlinkState.from_arrays(sections.get("down", {})),
    )


def run_with_link(
    exp: Experiment,
    link: Link,
    out: str | Path,
    on_round: RoundCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the plan's remaining rounds over ``link``, recording into the run directory ``out``.

    A directory that already holds a run is refused unless ``resume`` or ``overwrite``.
    """
    s = exp.scenario
    rd = RunDir(out, resume=resume, overwrite=overwrite)
    rd.write_scenario(dump(s))
    state = initial_state(exp, rd, resume)
    t_start = time.perf_counter()
    elapsed0 = rd.metrics()[-1].get("elapsed_s", 0.0) if resume and rd.metrics() else 0.0

    def record(st: ServerState, rec: RoundRecord) -> None:
        row = rec.row() | {"elapsed_s": elapsed0 + time.perf_counter() - t_start}
        rd.append_metrics(row)
        if s.output.checkpoint:
            sections = {"agg": state_to_arrays(st.agg_state), "down": st.downlink.to_arrays()}
            rd.write_checkpoint(st.round, st.params, sections)
        if on_round is not None:
            on_round(row)

    final = run(exp.plan, link, state, record)
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
) -> dict[str, Any]:
    """Run a scenario in-process or as local processes over gRPC; returns the summary."""
    if mode == "processes":
        from fedkit.launch import run_processes

        return run_processes(scenario, out, workers, on_round, resume, overwrite)
    if mode != "inprocess":
        raise ValueError(f"unknown mode {mode!r}; known: inprocess, processes")
    check_can_start(out, resume, overwrite)
    exp = build(scenario)
    link = inprocess_link(exp)
    try:
        return run_with_link(exp, link, out, on_round, resume, overwrite)
    finally:
        link.close()
