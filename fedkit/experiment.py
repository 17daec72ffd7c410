"""Run a scenario end to end and leave a run directory behind; used by the CLI and tests.

Modes differ only in the Link handed to the shared round engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkit.aggregation import state_from_arrays, state_to_arrays
from fedkit.models import build_model, set_params
from fedkit.peft.export import clear_rounds, save_round
from fedkit.peft.model import FACTORY as PEFT_FACTORY
from fedkit.report import plots
from fedkit.report.run_dir import (
    RunDir,
    check_can_start,
    load_params,
    params_hash,
    save_params,
    summarize,
)
from fedkit.runtime.client import (
    ClientHost,
    ClientState,
    Mod,
    hosts,
    personal_from_arrays,
    personal_to_arrays,
)
from fedkit.runtime.downlink import DownlinkState
from fedkit.runtime.link import Link
from fedkit.runtime.server import Plan, RoundRecord, ServerState, run
from fedkit.runtime.task import ModelRef
from fedkit.scenario import Scenario, dump
from fedkit.scenario.build import Experiment, build, initial_state
from fedkit.scenario.execution import make_executor
from fedkit.scenario.participation import presence
from fedkit.sim.availability import Always
from fedkit.sim.link import CostFn, Executor, InProcessLink, OnlineFn, PresentFn
from fedkit.split.wire import SplitConnect
from fedkit.transport.overhead import InProcessWire
from fedkit.types import ClientId, Params

RoundCallback = Callable[[Mapping[str, Any]], None]


def inprocess_link(
    clients: Mapping[ClientId, ClientState],
    cost: CostFn | None = None,
    connect: SplitConnect | None = None,
    online: OnlineFn | None = None,
    start_s: float = 0.0,
    present: PresentFn | None = None,
    executor: Callable[[Mapping[ClientId, ClientHost]], Executor] | None = None,
    mods: Mapping[ClientId, Sequence[Mod]] | None = None,
) -> Link:
    """Every client in this process; ``connect``: how they reach the split endpoint; ``cost``,
    ``online``, ``start_s``: the simulated clock (fedkit/sim/link.py); ``present``: who answers
    (participation patterns); ``executor(hosts)``: how the clients run (default: one after
    another, in this process); ``mods``: clients whose mod chain is not the default (simulated
    attackers)."""
    fleet = hosts(clients, connect, mods)  # one module shared by every simulated client
    return InProcessLink(fleet, cost, online, start_s, present, wire=InProcessWire(),  # wire bytes as gRPC would send them
                         executor=None if executor is None else executor(fleet))


def scenario_link(exp: Experiment, start_s: float = 0.0) -> Link:
    """The in-process Link of an experiment: on the simulated clock of its ``devices:``, with
    its ``participation:`` pattern deciding who answers and its ``execution:`` running them."""
    from fedkit.scenario.simulation import simulation

    s = exp.scenario
    connect = None if exp.plan.split is None else exp.plan.split.connect()
    labels = {c: st.train.y.numpy() for c, st in exp.clients.items()}
    present = presence(s.participation, s.seed, labels)
    executor = None if s.execution.kind == "sequential" else (lambda fleet: make_executor(s, fleet))
    sim = simulation(s, {c: st.num_train for c, st in exp.clients.items()})
    if sim is None:
        return inprocess_link(exp.clients, connect=connect, start_s=start_s, present=present, executor=executor,
                              mods=exp.mods)
    always = all(isinstance(d.availability, Always) for d in sim.devices.values())
    online = None if always else sim.online  # no per-call filter of a population always there
    return inprocess_link(exp.clients, sim.cost, connect, online, start_s, present, executor, exp.mods)


def resumed_clock(out: str | Path, resume: bool) -> float:
    """Simulated seconds a resumed run continues from: its checkpointed round's clock."""
    if not resume or not (Path(out) / "checkpoint.npz").exists():
        return 0.0
    ck = RunDir(out, resume=True).read_checkpoint()
    row = (ck.rows or {}).get("metrics", {}) if ck is not None else {}
    return float(row.get("sim_time_s") or 0.0)


def resume_state(plan: Plan, init_params: Params, rd: RunDir, resume: bool) -> ServerState:
    """The state to start from: the checkpoint's (logs repaired to agree with it) or round 0."""
    if not resume:
        return initial_state(plan, init_params)
    rd.repair()
    ck = rd.read_checkpoint()
    if ck is None:
        return initial_state(plan, init_params)
    _check_fits(plan, ck.params, init_params, rd.path)
    sec = ck.sections
    split = None
    if plan.split is not None:
        if "split" not in sec:
            raise ValueError(f"{rd.path}: the checkpoint holds no split server part (not a split run?)")
        split = plan.split.from_arrays(sec["split"])
    return ServerState(
        ck.round,
        ck.params,
        state_from_arrays(sec.get("agg", {})),
        DownlinkState.from_arrays(sec.get("down", {})),
        int(sec.get("engine", {}).get("version", ck.round)),
        split,
    )


def _check_fits(plan: Plan, params: Params, init_params: Params, path: Path) -> None:
    """A checkpoint whose params do not fit the scenario's model (a changed ``peft.lora.r`` or
    ``targets``, resumed with ``--force``) is refused here, naming the tensors, rather than
    failing on a shape deep in a round. Re-factorising to another rank is not done: truncating
    changes the model and zero-padding adds factors that never train, so start a new run."""
    bad = [i for i, (a, b) in enumerate(zip(params, init_params, strict=False)) if np.shape(a) != np.shape(b)]
    if not bad and len(params) == len(init_params):
        return
    names = list(build_model(plan.model.spec, plan.model.input_shape, plan.model.num_classes).state_dict())
    name = (lambda i: names[i] if i < len(names) else f"tensor {i}")  # noqa: E731
    what = [f"{name(i)}: checkpoint {tuple(np.shape(params[i]))}, scenario {tuple(np.shape(init_params[i]))}"
            for i in bad[:4]]
    if len(params) != len(init_params):
        what.append(f"checkpoint has {len(params)} tensors, the scenario's model {len(init_params)}")
    raise ValueError(f"{path}: the checkpoint does not fit the scenario's model ({'; '.join(what)}); a changed "
                     "model (e.g. peft.lora r or targets) cannot resume, even with --force: start a new run")


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
    adapters = plan.model.spec.get("name") == PEFT_FACTORY
    if adapters and not resume:
        clear_rounds(rd.path)
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
            if st.split is not None:
                sections["split"] = plan.split.to_arrays(st.split)
            kept = personal_to_arrays(link.client_states()) if isinstance(link, InProcessLink) else {}
            if kept:  # simulated clients' own tensors (FedSA's B), as a device keeps them
                sections["clients"] = kept
            rd.write_checkpoint(st.round, st.params, sections, {"metrics": row, "clients": rec.clients})
        if adapters:  # fine-tuning: every round's adapters are kept (they are small)
            save_round(rd.path, st.round, st.params)
        rd.append_rows(row, rec.clients)
        if on_round is not None:
            on_round(row)

    final = run(plan, link, state, record)
    rows = rd.metrics()
    summary = summarize(rows, final.params, s.seed, s.name, target_acc=s.evaluation.target_acc)
    if final.split is not None:  # split learning: params.npz is the client part; this the server's
        save_params(rd.path / "server_params.npz", final.split.shared.params)
        summary["server_params_sha256"] = params_hash(final.split.shared.params)
        split_bytes = sorted({k for r in rows for k in r if k.startswith("bytes_") and k not in ("bytes_down", "bytes_up")})
        summary |= {f"total_{k}": sum(r.get(k, 0) for r in rows) for k in split_bytes}
        summary |= plan.split.summary(rows, final.params, final.split.shared.params)  # privacy_eval
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
    engine: str = "fedkit",
) -> dict[str, Any]:
    """Run a scenario in-process or as local processes over gRPC; returns the summary.
    ``force``: resume even though the scenario differs from the run's. ``engine="flower"``
    runs it on Flower's simulation engine instead (fedkit/compat/flower/engine.py)."""
    if engine == "flower":
        if mode != "inprocess" or resume:
            raise ValueError("--engine flower runs in-process only, without --resume")
        if scenario.devices is not None:
            raise ValueError("--engine flower has no simulated clock: run devices: scenarios on fedkit's")
        from fedkit.compat.flower.engine import run_flower

        return run_flower(scenario, out, on_round, overwrite, workers)
    if engine != "fedkit":
        raise ValueError(f"unknown engine {engine!r}; known: fedkit, flower")
    if mode == "processes":
        from fedkit.launch import run_processes
        from fedkit.scenario.attacks import update_attacks

        if update_attacks(scenario):
            raise ValueError(f"attacks {', '.join(update_attacks(scenario))} are simulated in-process only "
                             "(label_flip poisons data and runs in every mode); use --mode inprocess")

        if scenario.participation is not None:
            raise ValueError("participation: patterns are simulated in-process only (--mode inprocess)")
        return run_processes(scenario, out, workers, on_round, resume, overwrite, force)
    if mode != "inprocess":
        raise ValueError(f"unknown mode {mode!r}; known: inprocess, processes")
    check_can_start(out, resume, overwrite, dump(scenario), force)
    torch.set_num_threads(1)  # the kernels every mode uses: bit-identical params across modes
    exp = build(scenario)
    if resume and (Path(out) / "checkpoint.npz").exists():  # what the simulated clients kept
        ck = RunDir(out, resume=True).read_checkpoint()
        if ck is not None and "clients" in ck.sections:
            exp.clients = personal_from_arrays(exp.clients, ck.sections["clients"])
    link = scenario_link(exp, resumed_clock(out, resume))
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
    if ref.spec.get("name") == PEFT_FACTORY:  # a fresh module, not the process's shared base
        from fedkit.peft.export import load_model as load_finetuned

        return load_finetuned(path)
    source = path / "params.npz" if (path / "params.npz").exists() else path / "checkpoint.npz"
    if not source.exists():
        raise FileNotFoundError(f"{path}: neither params.npz nor checkpoint.npz")
    params, extra = load_params(source)
    if (path / "server_params.npz").exists() or any(k.startswith("split/") for k in extra):
        return _split_model(path, ref, params, extra)
    module = build_model(ref.spec, ref.input_shape, ref.num_classes)
    set_params(module, params)
    return module.eval()


def _split_model(path: Path, ref: ModelRef, client: Params, extra: Mapping[str, np.ndarray]) -> torch.nn.Module:
    """A split run's composed model (client part, server part, U-shape's tail)."""
    from fedkit.scenario import load
    from fedkit.split.schemes import make_setup, whole
    from fedkit.split.server import state_from_arrays as split_state

    sp = load(path / "scenario.yaml").split
    if sp is None:
        raise ValueError(f"{path}: holds a split server part but its scenario has no split section")
    if (path / "params.npz").exists():
        server = load_params(path / "server_params.npz")[0]
    else:
        server = split_state({k[len("split/"):]: v for k, v in extra.items() if k.startswith("split/")}).shared.params
    dim = None if sp.bottleneck is None else sp.bottleneck.dim
    setup = make_setup(sp.scheme, build_model(ref.spec, ref.input_shape, ref.num_classes), sp.cut_list,
                       ref.input_shape, ref.num_classes, bottleneck=dim)
    module, join = whole(setup)
    set_params(module, join(client, server))
    return module.eval()
