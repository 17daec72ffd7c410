"""Turn a validated scenario into what each role needs, and nothing more.

:func:`build_server` makes the server's plan (the initial model, the aggregator, the round
policy, the typed task configuration, the central test set); :func:`build_clients` makes each
client's data. A deployed server builds only the first, a device only its own data, the
in-process simulation both (:func:`build`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedkit import rng as frng
from fedkit.aggregation import client_config, make_aggregator
from fedkit.attacks import flip_labels
from fedkit.compression import family
from fedkit.data import Dataset, load_dataset, partition
from fedkit.data.partition import matched_test
from fedkit.models import (
    LocalData,
    TrainConfig,
    evaluate,
    get_params,
    init_model,
    keyed_torch,
    set_params,
)
from fedkit.models.checkpoint import CheckpointError
from fedkit.peft.model import fold_base, unsent
from fedkit.registry import resolve_import
from fedkit.runtime.accept import Acceptance
from fedkit.runtime.async_policy import is_async, make_async_policy
from fedkit.runtime.client import ClientState, Mod
from fedkit.runtime.policy import Policy, Sampling, SequentialRound, SyncRound
from fedkit.runtime.root_set import RootSet, root_trainer
from fedkit.runtime.secagg import SecAggPlan, SecAggRound
from fedkit.runtime.server import Plan, ServerState, default_metrics
from fedkit.runtime.split import KIND as SPLIT_KIND
from fedkit.runtime.split import SplitPlan
from fedkit.runtime.task import ModelRef, SecAggField, SFPromptTask
from fedkit.scenario.attacks import client_mods, label_flipped, with_colluders
from fedkit.scenario.check import DataError, per_round
from fedkit.scenario.peft import model_spec
from fedkit.scenario.privacy import dp_plan
from fedkit.scenario.schema import Compression, Scenario, Schedule, read_examples
from fedkit.split.endpoint import Endpoint
from fedkit.split.privacy import Defence, evaluate_privacy
from fedkit.split.schemes import initial, make_setup, whole
from fedkit.split.server import server_init
from fedkit.types import ClientId, Params


def client_names(count: int) -> list[ClientId]:
    width = len(str(count - 1))
    return [f"client-{i:0{width}d}" for i in range(count)]


def load_data(s: Scenario) -> tuple[Dataset, list[np.ndarray]]:
    """The dataset and each client's indices; bad data raises :class:`DataError` (one line)."""
    ds = _dataset(s)
    p_params = {k: v for k, v in s.data.partition.items() if k != "name"}
    try:
        parts = partition(
            s.data.partition["name"], ds.partition_labels, s.clients.count, s.seed, groups=ds.groups,
            **p_params,
        )
    except ValueError as e:
        raise DataError(f"data.partition {s.data.partition['name']!r}: {e}") from None
    return ds, parts


def _dataset(s: Scenario) -> Dataset:
    ds_params = {k: v for k, v in s.data.dataset.items() if k != "name"}
    try:
        return load_dataset(s.data.dataset["name"], s.seed, **ds_params)
    except (ValueError, OSError) as e:
        raise DataError(f"data.dataset {s.data.dataset['name']!r}: {e}") from None


def build_clients(s: Scenario) -> dict[ClientId, ClientState]:
    """Each client's training samples; with federated evaluation also a seeded slice of the
    held-out test set: random (federated and centralized accuracy estimate the same quantity) or,
    ``federated_test: matched``, with the client's own label mix (personalised accuracy)."""
    ds, parts = load_data(s)
    names = client_names(len(parts))
    test_parts: list[np.ndarray | None] = [None] * len(parts)
    if s.evaluation.federated and s.evaluation.federated_test == "matched":
        try:
            test_parts = list(matched_test(ds.y_train, parts, ds.y_test, frng.rng(s.seed, "fed-test")))
        except ValueError as e:
            raise DataError(str(e)) from None
    elif s.evaluation.federated:
        order = frng.rng(s.seed, "fed-test").permutation(len(ds.y_test))
        test_parts = list(np.array_split(order, len(parts)))
    flipped = label_flipped(s)  # data poisoning (attacks: label_flip)
    out = {}
    for name, idx, tidx in zip(names, parts, test_parts, strict=True):
        y = ds.y_train[idx]
        out[name] = ClientState.from_arrays(
            name,
            ds.x_train[idx],
            flip_labels(y, ds.num_classes) if name in flipped else y,
            None if tidx is None else ds.x_test[tidx],
            None if tidx is None else ds.y_test[tidx],
        )
    return out


def schedule(train: TrainConfig, sched: Schedule | None, rounds: int) -> Callable[[int], TrainConfig]:
    """Each round's training settings: the learning rate follows the schedule over rounds."""
    if sched is None:
        return lambda rnd: train

    def lr(rnd: int) -> float:
        t = rnd - 1
        if sched.kind == "step":
            return train.lr * sched.gamma ** (t // sched.every)
        if sched.kind == "exponential":
            return train.lr * sched.gamma**t
        frac = t / max(rounds - 1, 1)  # cosine, from lr down to min_lr at the last round
        return sched.min_lr + 0.5 * (train.lr - sched.min_lr) * (1 + math.cos(math.pi * frac))

    return lambda rnd: train.model_copy(update={"lr": lr(rnd)})


def _aggregator(s: Scenario) -> Any:
    name = str(s.strategy["name"])
    params = {k: v for k, v in s.strategy.items() if k != "name"}
    if ":" in name:
        return resolve_import(name, "strategy factory")(**params)
    return make_aggregator(name, **params)


def _policy_and_aggregator(s: Scenario, secagg: Any = None) -> tuple[Any, Any]:
    """Synchronous rounds with the named aggregator, or an async strategy's own pair."""
    name = str(s.strategy["name"])
    if is_async(name):
        params = {k: v for k, v in s.strategy.items() if k != "name"}
        return make_async_policy(name, s.clients.count, s.server.deadline_s, **params)
    vanilla = s.split is not None and s.split.scheme == "vanilla"  # relays, never averages
    return _policy(s, secagg), make_aggregator("fedavg") if vanilla else _aggregator(s)


def _server_eval(s: Scenario, module: torch.nn.Module, ds: Dataset) -> Callable[[Params], dict[str, float]]:
    test = LocalData(torch.from_numpy(ds.x_test).float(), torch.from_numpy(ds.y_test).long())
    custom = resolve_import(s.evaluation.fn, "evaluation function") if s.evaluation.fn else None

    def central_eval(params: Params) -> dict[str, float]:
        set_params(module, fold_base(module, params))  # FedEx / FLoRA: the base change folded in
        with keyed_torch(frng.seed_int(s.seed, "torch-central-eval")):
            if custom is not None:
                module.eval()
                return {k: float(v) for k, v in custom(module, test).items()}
            return evaluate(module, test, device=s.train.device)

    return central_eval


def _split_plan(s: Scenario, module: torch.nn.Module, ds: Dataset) -> tuple[SplitPlan, Params]:
    """The split seam of the plan and the initial client part (the plan's params)."""
    sp = s.split
    assert sp is not None
    dim = None if sp.bottleneck is None else sp.bottleneck.dim
    setup = make_setup(sp.scheme, module, sp.cut_list, ds.input_shape, ds.num_classes, seed=s.seed, bottleneck=dim)
    client, server = initial(setup)
    opt = TrainConfig(**sp.server.model_dump())
    if "label_leakage" in sp.privacy_eval and ds.num_classes != 2:  # validation checks it where the data loads
        raise ValueError(f"split: privacy_eval label_leakage needs a binary task, the dataset has {ds.num_classes} classes")
    endpoint = Endpoint(setup, opt, gradients=sp.gradients, seed=s.seed, batch_size=s.train.batch_size,
                        leakage="label_leakage" in sp.privacy_eval)
    evaluate = None
    if s.evaluation.centralized:
        composed, join = whole(setup)
        central = _server_eval(s, composed, ds)
        evaluate = lambda c, p: central(join(c, p))  # noqa: E731
    defence = Defence(*sp.defence.values) if sp.defence is not None else Defence()
    privacy = None
    if "reconstruction" in sp.privacy_eval:
        if len(ds.x_test) < 2 or len(ds.x_train) < 2:
            raise ValueError("split: privacy_eval reconstruction needs train inputs (the attacker's) and a test set")
        data = (ds.x_train, ds.x_test)  # the attacker's auxiliary inputs, the inputs it decodes
        privacy = lambda c, p: evaluate_privacy(setup, c, p, data, defence=defence, seed=s.seed)  # noqa: E731
    sfprompt = (sp.sfprompt or SFPromptTask()) if sp.scheme == "sfprompt" else None
    plan = SplitPlan(setup, endpoint, server_init(endpoint.cfg, server), sp.cut_list, sp.activations,
                     sp.gradients, dim, evaluate, defence, privacy, sfprompt)
    return plan, client


def _secagg_plan(s: Scenario, init_params: Params) -> SecAggPlan | None:
    """Secure aggregation's seam of the plan: the field for the clients a round samples."""
    sa = s.privacy.secagg
    if sa is None:
        return None
    field = SecAggField(clip=sa.clip, levels=sa.levels(per_round(s)), bits=sa.bits,
                        weighting=sa.weighting, max_weight=sa.max_weight)
    layout = tuple((tuple(p.shape), p.dtype) for p in init_params)
    return SecAggPlan(field, layout, sa.degree, sa.threshold, sa.min_survivors, sa.complete, s.seed)


def _policy(s: Scenario, secagg: SecAggPlan | None = None) -> Policy:
    if secagg is not None:
        assert s.privacy.secagg is not None
        stage = s.privacy.secagg.deadline_s or s.server.deadline_s
        return SecAggRound(secagg, s.server.deadline_s, stage, s.server.min_replies)
    if s.split is None or s.split.scheme in ("splitfed_v1", "sfprompt"):  # clients in parallel
        return SyncRound(
            deadline_s=s.server.deadline_s,
            min_replies=s.server.min_replies,
            on_too_few=s.server.on_too_few,
            max_retries=s.server.max_retries,
            kind="train" if s.split is None else SPLIT_KIND,
            over_select=s.server.over_select,
        )
    return SequentialRound(SPLIT_KIND, s.server.deadline_s, s.server.min_replies, relay=s.split.scheme == "vanilla")


def build_server(s: Scenario) -> tuple[Plan, Params]:
    """The server's plan and the initial parameters (split learning: of the client part)."""
    ds = _dataset(s)
    spec = model_spec(s, ds.input_shape, ds.num_classes)  # a PEFT model: fedkit.peft's factory
    model = ModelRef(spec=spec, input_shape=tuple(ds.input_shape), num_classes=ds.num_classes)
    try:
        module = init_model(spec, ds.input_shape, ds.num_classes, frng.seed_int(s.seed, "init"))
    except CheckpointError as e:
        raise DataError(f"model.checkpoint: {e}") from None
    init_params = get_params(module)
    split_plan = None
    if s.split is not None:
        split_plan, init_params = _split_plan(s, module, ds)
    name = str(s.strategy["name"])
    strat = {k: v for k, v in s.strategy.items() if k != "name"}
    train = TrainConfig(**s.train.model_dump(exclude={"schedule"}))
    if ":" not in name and not is_async(name):
        extra = client_config(name, **strat)
        if "mu" not in strat and s.train.mu:
            extra.pop("mu", None)  # FedProx's mu given as train.mu
        train = train.model_copy(update=extra)
    metrics = default_metrics
    if s.evaluation.metrics_fn:
        metrics = resolve_import(s.evaluation.metrics_fn, "metrics function")
    per = s.clients.per_round
    secagg = _secagg_plan(s, init_params)
    policy, aggregator = _policy_and_aggregator(s, secagg)
    dp = dp_plan(s, aggregator)
    lora = None
    if s.peft is not None and s.peft.method == "lora" and (dp is None or s.peft.aggregation != "fedit"):
        from fedkit.scenario.lora import lora_engine  # with DP: DP-LoRA (fedkit/scenario/lora.py)

        lora = lora_engine(s, list(module.state_dict()), init_params, model, aggregator.server_opt,
                           client_names(s.clients.count), dp=None if dp is None else dp.aggregator)
        aggregator = lora.aggregator
        dp = None if dp is None else dataclasses.replace(dp, aggregator=aggregator)
    if dp is not None and dp.aggregator is not None:  # central DP: the noised mean replaces the reduce
        aggregator = dp.aggregator
    if name == "fltrust":
        aggregator = _fltrust_root(s, aggregator, model, ds, train)
    plan = Plan(
        seed=s.seed,
        rounds=s.rounds,
        aggregator=with_colluders(s, aggregator),
        model=model,
        train=schedule(train, s.train.schedule, s.rounds),
        acceptance=Acceptance.for_params(
            init_params,
            max_norm_ratio=s.server.max_norm_ratio,
            max_num_examples=s.server.max_num_examples,
            examples=read_examples(s.server.registered_examples) if s.server.registered_examples else None,
            max_staleness=s.server.max_staleness,
            codecs=uplink_families(s.compression),
            **(lora.acceptance(init_params) if lora is not None else {}),
            unsent=tuple(unsent(list(module.state_dict()), model.spec)),
        ),
        max_skipped_rounds=s.server.max_skipped_rounds,
        policy=policy,
        sampling=Sampling(s.seed, per.fraction if per.count is None else None, per.count, per.min, per.poisson),
        uplink=s.compression.uplink,
        downlink=s.compression.downlink,
        downlink_mode=s.compression.downlink_mode,
        evaluate=_server_eval(s, module, ds) if s.evaluation.centralized and split_plan is None else None,
        eval_every=s.evaluation.every,
        federated_eval=s.evaluation.federated,
        eval_deadline_s=s.server.deadline_s,
        metrics=metrics,
        split=split_plan,
        work=_partial_work(s, init_params),
        secagg=secagg,
        dp=dp,
        per_client=None if lora is None else lora.per_client,
        models={} if lora is None else lora.models,
    )
    return plan, init_params


def _partial_work(s: Scenario, init_params: Params) -> Any:
    if s.devices is None or s.server.stragglers != "partial":
        return None
    from fedkit.scenario.simulation import partial_work, simulation

    sim = simulation(s)
    return None if sim is None else partial_work(s, sim, init_params)


def uplink_families(c: Compression) -> frozenset[tuple[str, ...]] | None:
    """Codec families a server takes updates in: the uplink's plus ``uplink_accept`` (None: any)."""
    if c.uplink_accept == "any":
        return None
    return frozenset(family(spec) for spec in [c.uplink, *c.uplink_accept])


def _fltrust_root(s: Scenario, aggregator: Any, model: ModelRef, ds: Dataset, train: TrainConfig) -> RootSet:
    """FLTrust's root set: ``root_size`` samples drawn by seed from the *training* split (the
    server's clean data; never the test split that accuracy is measured on)."""
    size = min(int(s.strategy.get("root_size", 100)), len(ds.y_train))
    idx = np.sort(frng.rng(s.seed, "fltrust-root").choice(len(ds.y_train), size=size, replace=False))
    data = LocalData(torch.from_numpy(ds.x_train[idx]).float(), torch.from_numpy(ds.y_train[idx]).long())
    return RootSet(aggregator, root_trainer(model, data, train, s.seed), size)


def initial_state(plan: Plan, init_params: Params) -> ServerState:
    split = None if plan.split is None else plan.split.initial
    return ServerState(0, init_params, plan.aggregator.init(init_params), split=split)


@dataclass
class Experiment:
    """Both roles of an in-process simulation."""

    scenario: Scenario
    plan: Plan
    init_params: Params
    clients: dict[ClientId, ClientState]
    mods: dict[ClientId, tuple[Mod, ...]] = field(default_factory=dict)  # attackers' mod chains

    def initial_state(self) -> ServerState:
        return initial_state(self.plan, self.init_params)


def build(s: Scenario) -> Experiment:
    plan, init_params = build_server(s)
    return Experiment(s, plan, init_params, build_clients(s), client_mods(s))
