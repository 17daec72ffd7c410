"""The scenario schema: every key of a scenario file, its type and what is allowed.

Unknown keys are errors everywhere. Sections backed by a registry (dataset, partition, model,
strategy) are written ``{name: ..., <param>: ...}``; the allowed params come from the
registered function's signature, so a new registry entry needs no schema change. Later
sections (devices, split, privacy, attacks) slot in as new optional fields.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from fedkit.models.train import TrainConfig
from fedkit.registry import did_you_mean
from fedkit.runtime.task import SFPromptTask
from fedkit.scenario.attacks import Attacks
from fedkit.scenario.devices import Devices
from fedkit.scenario.participation import Participation
from fedkit.scenario.peft import Peft, check_peft
from fedkit.scenario.privacy import Privacy, check_privacy
from fedkit.types import Strict


def check_named(
    section: Mapping[str, Any],
    what: str,
    lookup: Callable[[str], Callable[..., Any]],
    known: list[str],
    skip: int,
    reserved: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Validate ``{name, **params}`` against the registered function's signature.

    ``skip`` leading positional parameters and the ``reserved`` names are supplied by fedkit,
    not by the user.
    """
    if not isinstance(section, Mapping) or "name" not in section:
        raise ValueError(f"{what} needs a 'name'; known: {', '.join(known)}")
    name = str(section["name"])
    fn = lookup(name)  # its error names the closest known name, or the real import error
    params = list(inspect.signature(fn, eval_str=True).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return dict(section)
    allowed = {
        p.name: p for p in params if p.kind is not p.VAR_POSITIONAL and p.name not in reserved
    }
    out: dict[str, Any] = {"name": name}
    for key, value in section.items():
        if key == "name":
            continue
        if key not in allowed:
            opts = sorted(allowed)
            raise ValueError(
                f"unknown parameter {key!r} for {what} {name!r}{did_you_mean(key, opts)}; "
                f"allowed: {', '.join(opts) or '(none)'}"
            )
        ann = allowed[key].annotation
        if ann is not inspect.Parameter.empty and not isinstance(ann, str):
            try:
                value = TypeAdapter(ann).validate_python(value)
            except ValidationError as e:
                msg = e.errors()[0]["msg"]
                raise ValueError(f"{what} {name!r} parameter {key!r}: {msg}") from None
        out[key] = value
    missing = [
        p.name for p in allowed.values() if p.default is inspect.Parameter.empty and p.name not in out
    ]
    if missing:
        raise ValueError(f"{what} {name!r} needs parameter(s): {', '.join(missing)}")
    return out


def dataset_section(v: Any) -> dict[str, Any]:
    from fedkit.data import DATASETS

    return check_named(v, "dataset", DATASETS.__getitem__, DATASETS.names(), skip=1)


def partition_section(v: Any) -> dict[str, Any]:
    from fedkit.data import PARTITIONERS

    return check_named(
        v, "partition", PARTITIONERS.__getitem__, PARTITIONERS.names(), skip=3, reserved=("groups",)
    )


def model_section(v: Any) -> dict[str, Any]:
    from fedkit.models.registry import MODELS

    if isinstance(v, Mapping) and "checkpoint" in v:  # fedkit's own pre-trained model (fedkit pretrain)
        return checkpoint_model_section(v)
    if isinstance(v, Mapping) and "hf" in v:  # a pre-trained transformers folder (fedkit/scenario/peft.py)
        from fedkit.scenario.peft import hf_model_section

        return hf_model_section(v)

    return check_named(v, "model", MODELS.lookup, MODELS.names(), skip=2)


def checkpoint_model_section(v: Mapping[str, Any]) -> dict[str, Any]:
    """``{name, checkpoint: DIR, reinit: [module, ...], **options}`` (fedkit/models/checkpoint.py): a
    folder that exists must fit (name, options); a missing one is a data problem (check_data), as a
    data file is; ``reinit`` modules keep their fresh initialisation."""
    from fedkit.models.checkpoint import CheckpointError, resolve_spec
    from fedkit.models.registry import MODELS

    ckpt, reinit = v["checkpoint"], v.get("reinit")
    out = check_named({k: x for k, x in v.items() if k not in ("checkpoint", "reinit")}, "model", MODELS.lookup,
                      MODELS.names(), skip=2)
    if not isinstance(ckpt, str) or not ckpt:
        raise ValueError(f"model.checkpoint must be a folder path, got {ckpt!r}")
    if reinit is not None and (not isinstance(reinit, list) or not all(isinstance(n, str) and n for n in reinit)):
        raise ValueError(f"model.reinit must be a list of module names, e.g. [head], got {reinit!r}")
    out["checkpoint"] = ckpt
    if reinit:
        out["reinit"] = list(reinit)
    if Path(ckpt).exists():
        try:
            resolve_spec(out)
        except CheckpointError as e:
            raise ValueError(str(e)) from None
    return out


def strategy_section(v: Any) -> dict[str, Any]:
    from fedkit.aggregation import make_aggregator
    from fedkit.registry import resolve_import
    from fedkit.runtime.async_policy import is_async, make_async_policy

    if not isinstance(v, Mapping) or "name" not in v:
        raise ValueError("strategy needs a 'name', e.g. {name: fedavg}")
    params = {k: x for k, x in v.items() if k != "name"}
    name = str(v["name"])
    if ":" in name:  # a user's factory: fn(**params) -> an aggregator (init, step)
        check_named(v, "strategy", lambda n: resolve_import(n, "strategy factory"), [], skip=0)
        return dict(v)
    if is_async(name):  # fedasync, fedbuff, fedcompass: a round policy and its server step
        make_async_policy(name, 1_000_000, **params)
        return dict(v)
    make_aggregator(name, **params)  # raises ValueError naming what is allowed
    return dict(v)


def import_path(v: str | None, what: str) -> str | None:
    from fedkit.registry import resolve_import

    if v is not None:
        resolve_import(v, what)  # the real import error, not "unknown"
    return v


class Sampling(Strict):
    """How many clients a round samples: a fraction of the population or a count.
    ``poisson: true``: each client takes part with probability ``fraction`` on its own (the
    sampling DP-FedAvg's accounting assumes), so the number per round varies."""

    fraction: float | None = Field(default=None, gt=0, le=1)
    count: int | None = Field(default=None, ge=1)
    min: int = Field(default=1, ge=1)
    poisson: bool = False

    @model_validator(mode="after")
    def _one(self) -> Sampling:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either 'fraction' or 'count', not both")
        if self.poisson and (self.fraction is None or self.min != 1):
            raise ValueError("poisson sampling takes a 'fraction' (each client's probability) and no 'count' or 'min'")
        return self


class Clients(Strict):
    count: int = Field(ge=1, le=1_000_000)
    per_round: Sampling = Sampling(fraction=1.0)


class Data(Strict):
    dataset: dict[str, Any]
    partition: dict[str, Any] = Field(default_factory=lambda: {"name": "iid"})

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, v: Any) -> dict[str, Any]:
        return dataset_section(v)

    @field_validator("partition", mode="before")
    @classmethod
    def _partition(cls, v: Any) -> dict[str, Any]:
        return partition_section(v)



class Schedule(Strict):
    """Learning rate over rounds: step (x gamma every ``every`` rounds), exponential (x gamma
    per round) or cosine (from ``lr`` at round 1 to ``min_lr`` at the last round)."""

    kind: Literal["step", "exponential", "cosine"]
    gamma: float = Field(default=0.5, gt=0, le=1)
    every: int = Field(default=10, ge=1)
    min_lr: float = Field(default=0.0, ge=0)


class Train(TrainConfig):
    """Local training on each client (fedkit/models/train.py), plus the server-side schedule.
    ``fn`` names a custom training function ``fn(model, data, config, rng) -> metrics``."""

    schedule: Schedule | None = None

    @field_validator("fn")
    @classmethod
    def _fn(cls, v: str | None) -> str | None:
        return import_path(v, "training function")


class Evaluation(Strict):
    """``fn``: server-side evaluation ``fn(model, test_data) -> metrics`` (loss and accuracy
    expected); ``metrics_fn``: how client metrics combine, ``fn(kind, [(n, metrics)]) -> dict``."""

    centralized: bool = True
    federated: bool = False
    federated_test: Literal["uniform", "matched"] = Field(
        default="uniform", description="clients' test slices: uniform random, or matched to each one's label mix"
    )
    every: int = Field(default=1, ge=1)
    fn: str | None = None
    metrics_fn: str | None = None
    target_acc: float | None = Field(
        default=None, gt=0, le=1, description="accuracy whose first reach the summary times"
    )

    @field_validator("fn")
    @classmethod
    def _fn(cls, v: str | None) -> str | None:
        return import_path(v, "evaluation function")

    @field_validator("metrics_fn")
    @classmethod
    def _metrics_fn(cls, v: str | None) -> str | None:
        return import_path(v, "metrics function")


def read_examples(path: str) -> dict[str, int]:
    """``{client: example count}`` from a JSON file, checked."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"registered_examples: cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in data.items()
    ):
        raise ValueError(f"registered_examples: {path} must map client names to counts >= 0")
    return data


class Server(Strict):
    """How the server runs a round when clients are slow or gone."""

    # How long a round waits for replies over a network (null: until every sampled client has
    # replied or disconnected). A hung device must not stall the experiment, hence a default.
    # With a devices: section the simulation charges every task on a simulated clock and
    # this is in simulated seconds; without one every simulated task takes no time.
    deadline_s: float | None = Field(default=600.0, gt=0)
    min_replies: int = Field(default=1, ge=1)
    on_too_few: Literal["skip", "retry"] = "skip"
    max_retries: int = Field(default=2, ge=0)
    # Sanity bounds on what a reply may claim (fedkit/runtime/accept.py): an update whose norm
    # exceeds max_norm_ratio x the initial model's norm is refused, as is a num_examples above
    # max_num_examples or above the count registered for the client (a JSON file {client: n}).
    max_norm_ratio: float | None = Field(default=100.0, gt=0)
    max_num_examples: int | None = Field(default=10**9, ge=1)
    registered_examples: str | None = None
    # Stop the run (exit 1, checkpoints kept) after this many consecutive rounds without a new
    # model: a run whose every update is refused must not finish "successfully".
    max_skipped_rounds: int | None = Field(default=10, ge=1)
    # Deployed servers (fedkit server, on the real clock): a client that missed this many
    # deadlines in a row sits out 1, 2, 4, ... rounds (a hung device must not stall every
    # round); any answer clears it (fedkit/runtime/server.py Benched). Simulations sample as
    # the scenario says: a simulated straggler is slow, not hung.
    bench_after: int | None = Field(default=3, ge=1)
    # Late clients: drop them (FedAvg) or, with a devices: section, have each do the local
    # steps that fit before the deadline and send that work (FedProx's partial work).
    stragglers: Literal["drop", "partial"] = "drop"
    # Sample ceil(over_select x K) clients, aggregate the first K to finish, cancel the rest
    # (FedScale/Oort's over-commitment, e.g. 1.3).
    over_select: float = Field(default=1.0, ge=1.0, le=10.0)
    # refuse updates trained on a model more than this many versions old (async strategies)
    max_staleness: int | None = Field(default=None, ge=0)

    @field_validator("registered_examples")
    @classmethod
    def _registered(cls, v: str | None) -> str | None:
        if v is not None:
            read_examples(v)
        return v


class Compression(Strict):
    """Codec pipelines (spec strings, see fedkit/compression/base.py), e.g.
    ``ef:topk(ratio=0.01)|quant(bits=8)|zstd``. ``downlink_mode: delta`` sends the downlink
    codec's encoding of the change since the model each client holds (fedkit/runtime/downlink.py)."""

    uplink: str = "identity"
    downlink: str = "identity"
    downlink_mode: Literal["full", "delta"] = "full"
    # codecs a server takes updates in besides the uplink's family (stage names; settings may
    # differ), or "any": e.g. a fleet of devices that each pick their own codec
    uplink_accept: list[str] | Literal["any"] = Field(default_factory=list)

    @model_validator(mode="after")
    def _codecs(self) -> Compression:
        from fedkit.compression import make

        extra = [] if self.uplink_accept == "any" else list(self.uplink_accept)
        for field, spec in [("uplink", self.uplink), ("downlink", self.downlink)] + [
            (f"uplink_accept[{i}]", s) for i, s in enumerate(extra)
        ]:
            try:
                make(spec)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{field}: {e}") from None
        if self.downlink.startswith("ef:"):
            raise ValueError(
                "downlink: drop 'ef:'; downlink_mode: delta already carries the server's residual "
                "(what a lossy codec dropped is sent in later rounds)"
            )
        return self


SCHEMES = ("vanilla", "splitfed_v1", "splitfed_v2", "ushape", "local_loss", "sfprompt")
SEQUENTIAL = ("vanilla", "splitfed_v2", "ushape", "local_loss")  # one client after another


class SplitServer(Strict):
    """The optimizer of the server's part (the client part uses ``train:``)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class Bottleneck(Strict):
    """A learned bottleneck at the (first) cut: ``dim`` channels (or features) on the wire."""

    dim: int = Field(ge=1)


class NoPeek(Strict):
    """NoPeek (Vepakomma et al. 2020): ``weight * dCor(input, smashed data)`` joins the client
    part's loss (fedkit/split/privacy.py)."""

    weight: float = Field(gt=0, allow_inf_nan=False)


class ActivationNoise(Strict):
    """Gaussian noise of std ``sigma`` on the smashed data before it leaves the client."""

    sigma: float = Field(gt=0, allow_inf_nan=False)


class SplitDefence(Strict):
    """The client's defences of its smashed data; give one or both."""

    nopeek: NoPeek | None = None
    noise: ActivationNoise | None = None

    @model_validator(mode="after")
    def _some(self) -> SplitDefence:
        if self.nopeek is None and self.noise is None:
            raise ValueError("defence: give nopeek: {weight: w} and/or noise: {sigma: s}, or drop 'defence'")
        return self

    @property
    def values(self) -> tuple[float, float]:
        """(nopeek weight, noise sigma), 0 for an absent one (fedkit.split.privacy.Defence)."""
        return (0.0 if self.nopeek is None else self.nopeek.weight, 0.0 if self.noise is None else self.noise.sigma)


class Split(Strict):
    """Split learning (fedkit/split/): the model is cut at ``cut`` (U-shape: ``cuts: [a, b]``),
    the client trains its part, the server the rest. ``activations`` / ``gradients`` are the
    codec specs of client -> server and server -> client tensors. ``defence`` protects the
    smashed data (NoPeek, noise); ``privacy_eval`` runs attacks on the final model and reports
    ``privacy_*`` in summary.json (fedkit/split/privacy.py). ``sfprompt``: SFPrompt's gamma and
    local epochs (scheme sfprompt, with ``peft: {method: prompt}``; fedkit/split/sfprompt.py)."""

    scheme: Literal["vanilla", "splitfed_v1", "splitfed_v2", "ushape", "local_loss", "sfprompt"]
    cut: str | None = None
    cuts: list[str] | None = None
    server: SplitServer = SplitServer()
    activations: str = "identity"
    gradients: str = "identity"
    bottleneck: Bottleneck | None = None
    defence: SplitDefence | None = None
    privacy_eval: list[Literal["label_leakage", "reconstruction"]] = []
    sfprompt: SFPromptTask | None = None

    @property
    def cut_list(self) -> tuple[str, ...]:
        return tuple(self.cuts) if self.cuts is not None else (self.cut,) if self.cut is not None else ()

    @model_validator(mode="after")
    def _check(self) -> Split:
        from fedkit.compression import make

        if (self.cut is None) == (self.cuts is None):
            u = self.scheme in ("ushape", "sfprompt")
            want = "cuts: [a, b] (head/body and body/tail)" if u else "cut: <module name>"
            raise ValueError(f"give either 'cut' or 'cuts', not {'both' if self.cut else 'neither'}; {self.scheme} takes {want}")
        need = 2 if self.scheme in ("ushape", "sfprompt") else 1
        if len(self.cut_list) != need:
            raise ValueError(f"scheme {self.scheme} takes {need} cut(s), got {list(self.cut_list)}")
        for field in ("activations", "gradients"):
            try:
                make(getattr(self, field))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{field}: {e}") from None
        if self.scheme == "local_loss" and self.gradients != "identity":
            raise ValueError("local_loss sends no gradients to the client; drop 'gradients'")
        if self.sfprompt is not None and self.scheme != "sfprompt":
            raise ValueError(f"the sfprompt: section is for scheme sfprompt, not {self.scheme}")
        if self.scheme == "sfprompt" and self.bottleneck is not None:
            raise ValueError("scheme sfprompt cuts a pre-trained model; a bottleneck does not apply (drop 'bottleneck')")
        if len(set(self.privacy_eval)) != len(self.privacy_eval):
            raise ValueError(f"privacy_eval lists an attack twice: {self.privacy_eval}")
        if "label_leakage" in self.privacy_eval and self.scheme in ("ushape", "local_loss", "sfprompt"):
            why = "sends no gradients down" if self.scheme == "local_loss" else "keeps the labels on the client"
            raise ValueError(f"privacy_eval: label_leakage measures the gradients the server sends down for the "
                             f"labels it gets; {self.scheme} {why} (drop label_leakage)")
        return self


def check_split(s: Scenario) -> None:
    """What the split section needs from the rest of the scenario, and cut names that exist."""
    sp = s.split
    if sp is None:
        return
    if s.evaluation.federated:
        raise ValueError("split: federated evaluation of a split model is not supported; use evaluation.centralized")
    if s.train.fn is not None:
        raise ValueError("split: train.fn does not apply (split training runs fedkit.split.client.train_split)")
    if sp.scheme == "vanilla" and s.strategy["name"] != "fedavg":
        raise ValueError(
            f"split: vanilla relays the client part from client to client; strategy {s.strategy['name']!r} "
            "does not apply (use splitfed_v1/v2, ushape or local_loss to aggregate client parts)"
        )
    if sp.scheme in SEQUENTIAL:
        if s.server.on_too_few == "retry":
            raise ValueError(f"split: {sp.scheme} runs clients one after another; server.on_too_few: retry is not supported")
        if s.compression.downlink_mode == "delta":
            raise ValueError(f"split: {sp.scheme} runs clients one after another; use compression.downlink_mode: full")
    if sp.scheme == "sfprompt" and (s.peft is None or s.peft.method != "prompt"):
        got = "no peft: section" if s.peft is None else f"peft.method {s.peft.method}"
        raise ValueError(f"split: scheme sfprompt tunes the prompts + tail of a pre-trained model; it needs "
                         f"peft: {{method: prompt, train_also: [<tail modules>]}} (got {got})")
    built = _split_model(s)
    if built is None:
        return
    from fedkit.split import cut_names, split, with_bottleneck

    model, shape, classes = built
    names = cut_names(model)
    for cut in sp.cut_list:
        if cut not in names:
            raise ValueError(f"split: unknown cut {cut!r}{did_you_mean(cut, names)}; valid cuts: {', '.join(names)}")
    try:
        parts = split(model, sp.cut_list)
        if sp.scheme == "sfprompt":  # what trains comes from peft: build the PEFT model and cut it
            _sfprompt_setup(s, shape, classes)
        if sp.bottleneck is not None:
            with_bottleneck(parts, shape, sp.bottleneck.dim)
    except ValueError as e:
        raise ValueError(f"split: {e}") from None
    if "label_leakage" in sp.privacy_eval and classes != 2:
        raise ValueError(f"split: privacy_eval label_leakage needs a binary task (2 classes), the dataset has "
                         f"{classes}; e.g. dataset: {{name: digits, positive: [0]}}")


def _sfprompt_setup(s: Scenario, shape: tuple[int, ...], classes: int) -> None:
    """Cut the PEFT-wrapped model as the run will: a trainable body or a head output the tail
    cannot take is refused here, naming the cuts."""
    from fedkit.models import build_model
    from fedkit.scenario.peft import model_spec
    from fedkit.split.schemes import make_setup

    assert s.split is not None
    module = build_model(model_spec(s), shape, classes)
    make_setup("sfprompt", module, s.split.cut_list, shape, classes, seed=s.seed)


def _split_model(s: Scenario) -> tuple[Any, tuple[int, ...], int] | None:
    """The scenario's model, built to list its cuts; None when the data cannot be read here
    (a deployed server without the files): ``split()`` refuses a bad cut at build time then."""
    from fedkit.data import load_dataset
    from fedkit.models import build_model

    params = {k: v for k, v in s.data.dataset.items() if k != "name"}
    if "checkpoint" in s.model and not Path(s.model["checkpoint"]).exists():
        return None  # a missing checkpoint is a data problem (check_data), as a missing data file is
    try:
        ds = load_dataset(s.data.dataset["name"], s.seed, **params)
    except (OSError, ValueError):
        return None
    return build_model(s.model, ds.input_shape, ds.num_classes), ds.input_shape, ds.num_classes


class Execution(Strict):
    """How the in-process simulation runs the sampled clients (fedkit/scenario/execution.py);
    every kind gives the same parameters (``stacked``: to float tolerance).
    ``workers``: processes (pool; default: this machine's cores) or Ray actors (default: the
    cluster's CPUs). ``address``: the Ray cluster (``auto`` or ``ray://host:10001``); none
    starts a local Ray."""

    kind: Literal["sequential", "pool", "ray", "stacked"] = "sequential"
    workers: int | None = Field(default=None, ge=1)
    address: str | None = None

    @model_validator(mode="after")
    def _fits(self) -> Execution:
        if self.address is not None and self.kind != "ray":
            raise ValueError(f"address is for kind ray, not {self.kind}")
        if self.workers is not None and self.kind not in ("pool", "ray"):
            raise ValueError(f"workers is for kinds pool and ray, not {self.kind}")
        return self


class Output(Strict):
    dir: str = "runs"
    plot: bool = True
    checkpoint: bool = True


class Scenario(Strict):
    name: str = Field(min_length=1)
    seed: int = 0
    rounds: int = Field(ge=1, le=1_000_000)
    clients: Clients
    data: Data
    model: dict[str, Any]
    train: Train = Train()
    strategy: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})
    evaluation: Evaluation = Evaluation()
    server: Server = Server()
    compression: Compression = Field(default_factory=Compression)
    split: Split | None = None
    devices: Devices | None = None
    participation: Participation | None = None
    execution: Execution = Execution()
    privacy: Privacy = Privacy()
    attacks: Attacks = Field(default_factory=list)  # simulated malicious clients (fedkit/scenario/attacks.py)
    peft: Peft | None = None
    output: Output = Output()

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> dict[str, Any]:
        return model_section(v)

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, v: Any) -> dict[str, Any]:
        return strategy_section(v)


    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.train.mu and self.strategy["name"] == "fedprox" and "mu" in self.strategy:
            raise ValueError("give FedProx's mu once: strategy.mu or train.mu, not both")
        s = self.clients.per_round
        if s.count is not None and s.count > self.clients.count:
            raise ValueError(
                f"clients.per_round.count={s.count} exceeds clients.count={self.clients.count}"
            )
        if s.min > self.clients.count:
            raise ValueError(f"clients.per_round.min={s.min} exceeds clients.count={self.clients.count}")
        if self.server.on_too_few == "retry" and self.clients.per_round.poisson:
            raise ValueError("clients.per_round.poisson: server.on_too_few: retry is not supported (use skip)")
        check_split(self)
        check_peft(self)
        if self.train.device != "cpu" and (self.split is not None or self.execution.kind == "stacked"):
            raise ValueError(f"train.device {self.train.device}: split learning and execution kind stacked "
                             "train on CPU only; use device: cpu")
        if self.devices is not None and self.split is not None:
            raise ValueError("devices: split learning's per-batch messages are not charged on the "
                             "simulated clock yet; remove devices: or split:")
        if self.server.stragglers == "partial":
            if self.devices is None:
                raise ValueError("server.stragglers: partial needs a devices: section (whose "
                                 "speeds say how many local steps fit before the deadline)")
            if self.server.deadline_s is None:
                raise ValueError("server.stragglers: partial needs a server.deadline_s")
        if self.participation is not None:
            self.participation.check_count(self.clients.count)
        self._async_fits()
        check_privacy(self)
        return self

    def _async_fits(self) -> None:
        """Async strategies keep tasks in flight across rounds: refuse what assumes a barrier."""
        from fedkit.runtime.async_policy import is_async

        name = str(self.strategy["name"])
        if not is_async(name):
            return
        conc = self.strategy.get("concurrency")
        if conc is not None and conc > self.clients.count:
            raise ValueError(f"strategy.concurrency={conc} exceeds clients.count={self.clients.count}")
        srv = self.server

        def changed(name: str) -> bool:  # by value: a dumped scenario spells out every default
            return bool(getattr(srv, name) != Server.model_fields[name].default)

        sync_only = {
            "clients.per_round": self.clients.per_round != Clients.model_fields["per_round"].default,
            **{f"server.{k}": changed(k) for k in
               ("min_replies", "on_too_few", "max_retries", "stragglers", "over_select")},
            "evaluation.federated": self.evaluation.federated,
            "compression.downlink_mode: delta": self.compression.downlink_mode == "delta",
            "participation": self.participation is not None,
            "split": self.split is not None,
        }
        bad = [k for k, v in sync_only.items() if v]
        if bad:
            hint = " (use strategy.concurrency)" if "clients.per_round" in bad else ""
            raise ValueError(
                f"strategy {name!r} is asynchronous; these settings are for synchronous rounds "
                f"only: {', '.join(bad)}{hint}"
            )
