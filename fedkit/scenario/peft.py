"""The ``peft:`` scenario section and the ``model: {hf: DIR, ...}`` form: fine-tuning a
pre-trained model where only the trainable tensors travel (fedkit/peft/).

    model: {hf: models/minilm, task: sequence-classification, num_labels: 8}
    peft:
      method: lora                 # lora | bias | prompt (a model's prompt tokens, e.g. vit_tiny prompt_tokens: 8) | adapter
      lora: {r: 8, alpha: 16, dropout: 0.0, targets: [query, value]}
      # adapter: {dim: 16, targets: [attention.output.dense, output.dense], activation: gelu}
      train_also: [classifier]     # modules trained and exchanged in full
      aggregation: fedit           # fedit, or a variant of fedkit/aggregation/lora.py

``peft:`` also applies to fedkit's own models (LoRA on their ``nn.Linear`` layers by module
name, e.g. ``targets: ["1"]`` for the first Linear of an ``mlp``); their frozen base is the
seeded initial model (or a pre-trained checkpoint where the model supports one). A ``model:
{hf: ...}`` without ``peft:`` is full fine-tuning. Validation loads nothing it need not: the
folder, its config and (to check module names) the model itself; a missing optional library is
an error carrying the install command.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from fedkit.peft.model import FACTORY
from fedkit.types import Strict

if TYPE_CHECKING:
    from fedkit.scenario.schema import Scenario


class HFModel(Strict):
    """A transformers checkpoint in a local folder, loaded with ``from_pretrained``."""

    hf: str = Field(min_length=1)
    task: Literal["sequence-classification", "causal-lm", "image-classification"] = "sequence-classification"
    num_labels: int | None = Field(default=None, ge=1)

    @field_validator("hf")
    @classmethod
    def _folder(cls, v: str) -> str:
        from fedkit.peft.hf import check_folder

        check_folder(v)
        return v


def hf_model_section(v: Mapping[str, Any]) -> dict[str, Any]:
    """``model: {hf: ...}`` checked: the optional libraries, the folder, a config the task uses."""
    from fedkit.peft.hf import TASKS, check_config, require

    require("transformers", "safetensors")
    m = HFModel.model_validate(dict(v))
    if m.task == "causal-lm" and m.num_labels is not None:
        raise ValueError("model.num_labels is for classification tasks; a causal LM predicts its vocabulary")
    if m.task not in TASKS:
        raise ValueError(f"model.task {m.task!r} is not supported yet; known: {', '.join(TASKS)}")
    check_config(m.hf, m.task)
    return m.model_dump(exclude_none=True)


class Lora(Strict):
    """LoRA (Hu et al., ICLR 2022): W0 + (alpha / r) B A on the ``targets`` Linear modules."""

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    targets: list[str] = Field(min_length=1)


class Adapter(Strict):
    """Bottleneck adapters (Houlsby et al., ICML 2019) after the ``targets`` modules:
    ``h + up(act(down(h)))`` of width ``dim``, up zero-initialised (fedkit/peft/adapter.py)."""

    dim: int = Field(default=16, ge=1)
    targets: list[str] = Field(min_length=1)
    activation: Literal["gelu", "relu", "tanh"] = "gelu"


def aggregation_names() -> list[str]:
    """``fedit`` (FedAvg of adapter tensors: the scenario's strategy as it is) plus the
    variants fedkit/aggregation/lora.py registers, when that module exists."""
    names = {"fedit"}
    try:
        from fedkit.aggregation import lora  # type: ignore[attr-defined]
    except ImportError:
        return sorted(names)
    for attr in vars(lora).values():  # its registry of variants, whatever it is called
        keys = getattr(attr, "names", None)
        if callable(keys) and type(attr).__name__ == "Registry":
            names |= set(keys())
    return sorted(names)


class Peft(Strict):
    """What trains and travels when fine-tuning a pre-trained model."""

    method: Literal["lora", "bias", "prompt", "adapter"] = "lora"
    lora: Lora | None = None
    adapter: Adapter | None = None
    train_also: list[str] = Field(default_factory=list)
    aggregation: str = "fedit"

    @field_validator("aggregation")
    @classmethod
    def _aggregation(cls, v: str) -> str:
        from fedkit.registry import did_you_mean

        known = aggregation_names()
        if v not in known:
            raise ValueError(f"unknown peft.aggregation {v!r}{did_you_mean(v, known)}; known: {', '.join(known)}")
        return v

    def model_post_init(self, context: Any) -> None:
        if self.method == "lora" and self.lora is None:
            raise ValueError("peft.method lora needs a lora: {r, alpha, dropout, targets} section")
        if self.method != "lora" and self.lora is not None:
            raise ValueError(f"peft.lora is for method lora, not {self.method}")
        if (self.method == "adapter") != (self.adapter is not None):
            raise ValueError("peft.method adapter needs an adapter: {dim, targets} section" if self.adapter is None
                             else f"peft.adapter is for method adapter, not {self.method}")
        if self.method != "lora" and self.aggregation != "fedit":
            raise ValueError(f"peft.aggregation {self.aggregation!r} is for LoRA factors; method {self.method} uses fedit")


def trainable_names(s: Scenario) -> list[str]:
    """The names of the scenario's Params in order (peft's state-dict names), e.g. for an
    aggregation variant that pairs LoRA factors (:func:`fedkit.peft.model.lora_pairs`)."""
    from fedkit.peft.model import build

    shaped = _dataset_shape(s)
    if shaped is None:
        raise ValueError("the dataset cannot be read here, so the model's shapes are unknown")
    spec = model_spec(s, *shaped)
    if spec.get("name") != FACTORY:
        from fedkit.models import build_model

        return list(build_model(spec, *shaped).state_dict())
    return list(build(*shaped, spec["base"], spec.get("peft"), s.seed).state_dict())


def uses_peft(s: Scenario) -> bool:
    return s.peft is not None or "hf" in s.model


def model_spec(s: Scenario, shape: tuple[int, ...] | None = None, classes: int | None = None) -> dict[str, Any]:
    """The model spec the server sends and clients build: the scenario's own ``model`` unless
    it fine-tunes a pre-trained model, then fedkit.peft's factory with the base's hash."""
    if not uses_peft(s):
        return dict(s.model)
    spec: dict[str, Any] = {"name": FACTORY, "base": dict(s.model), "seed": s.seed}
    if s.peft is not None:
        spec["peft"] = s.peft.model_dump(exclude={"aggregation"})
        from fedkit.aggregation.lora import LORA_AGGREGATIONS

        variant = LORA_AGGREGATIONS[s.peft.aggregation]
        frozen = sorted(set("AB") - variant.train)
        if frozen:  # ffa, fedsvd: A travels but never trains
            spec["peft"]["frozen"] = [f"lora_{f}" for f in frozen]
        if variant.personal:  # fedsa: each client keeps its own B (fedkit/runtime/client.py)
            spec["peft"]["personal"] = [f"lora_{f}" for f in sorted(variant.personal)]
        if variant.base:  # fedex, flora: the downlink's base change (fedkit.peft.model.fold_base)
            spec["peft"]["base"] = "factors" if variant.name == "flora" else "dense"
    if "hf" in s.model:
        from fedkit.peft.hf import folder_sha256

        spec["base_sha256"] = folder_sha256(s.model["hf"])
    elif shape is not None and classes is not None:
        spec["base_sha256"] = _own_base_sha256(spec, shape, classes)
    return spec


def _own_base_sha256(spec: Mapping[str, Any], shape: tuple[int, ...], classes: int) -> str:
    from fedkit.models.checkpoint import CheckpointError
    from fedkit.peft.model import build
    from fedkit.scenario.check import DataError

    try:
        return build(shape, classes, spec["base"], spec.get("peft"), int(spec["seed"])).base_sha256
    except CheckpointError as e:  # not written yet: a data problem, reported as one line
        raise DataError(f"model.checkpoint: {e}") from None


def _dataset_shape(s: Scenario) -> tuple[tuple[int, ...], int] | None:
    from fedkit.data import load_dataset

    params = {k: v for k, v in s.data.dataset.items() if k != "name"}
    try:
        ds = load_dataset(s.data.dataset["name"], s.seed, **params)
    except (OSError, ValueError):
        return None
    return ds.input_shape, ds.num_classes


def check_peft(s: Scenario) -> None:
    """What the PEFT section needs from the rest of the scenario, and targets that exist
    (the model is built to list its modules; skipped where the data cannot be read here)."""
    if not uses_peft(s):
        return
    from fedkit.peft.hf import require

    if s.peft is not None and s.peft.method == "lora":
        require("peft")
    if s.split is not None and s.split.scheme != "sfprompt":
        raise ValueError(f"peft: split learning of a PEFT model runs scheme sfprompt (prompts + tail on the client, "
                         f"frozen body on the server), not {s.split.scheme}; use split.scheme: sfprompt or remove split:")
    if s.execution.kind == "stacked":
        raise ValueError("peft: execution kind stacked is not supported for fine-tuning yet; use sequential or pool")
    if s.peft is not None and s.peft.method == "lora":
        _check_lora_engine(s)
    if s.peft is not None and s.peft.aggregation != "fedit" and s.privacy.dp is not None:
        _check_lora_dp(s)
    if s.peft is not None and s.peft.aggregation != "fedit" and s.privacy.secagg is not None:
        raise ValueError(f"peft.aggregation {s.peft.aggregation!r} with privacy.secagg is not supported: secure "
                         "aggregation releases only the sum of full updates; use aggregation: fedit")
    if s.peft is not None and s.peft.aggregation != "fedit" and s.strategy["name"] != "fedavg":
        _check_lora_strategy(s)
    shaped = _dataset_shape(s)
    if shaped is None or not Path(s.model.get("checkpoint", ".")).exists():
        return  # unreadable data, a checkpoint not written yet: data problems (check_data) of a run
    shape, classes = shaped
    labels = s.model.get("num_labels")
    if labels is not None and labels != classes:
        raise ValueError(f"model.num_labels={labels} but the dataset has {classes} classes")
    from fedkit.peft.model import build

    build(shape, classes, dict(s.model), None if s.peft is None else s.peft.model_dump(exclude={"aggregation"}), s.seed)


def _check_lora_engine(s: Scenario) -> None:
    """What a LoRA variant's per-client downlink (fedkit/scenario/lora.py) needs of the rest."""
    from fedkit.aggregation.lora import LORA_AGGREGATIONS

    assert s.peft is not None and s.peft.lora is not None
    v = LORA_AGGREGATIONS[s.peft.aggregation]
    if (v.base or v.ranks) and s.compression.downlink_mode != "full":
        raise ValueError(f"peft.aggregation {v.name!r} sends each client its own downlink (rank, base change); "
                         "use compression.downlink_mode full")
    ranks = {n: p.lora_rank for n, p in (s.devices.profiles if s.devices else {}).items() if p.lora_rank}
    if ranks and not v.ranks:
        raise ValueError(f"devices: profiles give LoRA ranks ({', '.join(ranks)}), but peft.aggregation {v.name!r} "
                         "needs one rank for all clients; use flexlora or flora, or drop lora_rank")
    over = {n: r for n, r in ranks.items() if r > s.peft.lora.r}
    if over:
        raise ValueError(f"devices: lora_rank {over} above peft.lora.r={s.peft.lora.r} "
                         "(the global adapter's rank must be the largest)")


def _check_lora_dp(s: Scenario) -> None:
    """DP-LoRA (central DP-FedAvg on the tensors clients send) holds where the server step is
    post-processing of the noised mean: ffa (A frozen and public), fedsvd (re-factorised after
    the mean), fedsa (A averaged; B never leaves the client)."""
    from fedkit.aggregation.lora import LORA_AGGREGATIONS

    assert s.peft is not None and s.privacy.dp is not None
    v, dp = LORA_AGGREGATIONS[s.peft.aggregation], s.privacy.dp
    if v.opt == "exact":
        raise ValueError(f"peft.aggregation {v.name!r} with privacy.dp: its server step is not a mean of clipped "
                         "updates (it combines each client's own factors: products, stacks), so DP-FedAvg's "
                         "sensitivity does not bound what it releases; use fedit, ffa, fedsa or fedsvd")
    if dp.mode != "central":
        raise ValueError(f"peft.aggregation {v.name!r} with privacy.dp mode {dp.mode}: local noise reaches the "
                         "factors the variant keeps frozen; use mode central (or aggregation fedit)")
    if dp.adaptive is not None:
        raise ValueError(f"peft.aggregation {v.name!r} with privacy.dp.adaptive: DP-LoRA clips at a fixed norm; "
                         "drop adaptive (or use aggregation fedit)")


def _check_lora_strategy(s: Scenario) -> None:
    """A LoRA variant replaces the strategy's reduce (its own combination of the factors) and
    keeps the strategy's server step where its maths allows (FedProx: the client's proximal term
    and server SGD; FedOpt: fedit, ffa, fedsa; server SGD at lr 1 for the exact averages)."""
    from fedkit.aggregation import ASYNC_STRATEGIES, make_aggregator
    from fedkit.aggregation.base import Aggregator
    from fedkit.aggregation.lora import check_server_opt, lora_variant
    from fedkit.aggregation.reduce import weighted_mean

    assert s.peft is not None
    agg, name = s.peft.aggregation, str(s.strategy["name"])
    strategy = None
    if ":" not in name and name not in ASYNC_STRATEGIES:  # the schema has checked the name and its parameters
        strategy = make_aggregator(name, **{k: v for k, v in s.strategy.items() if k != "name"})
    if not isinstance(strategy, Aggregator) or strategy.reduce is not weighted_mean:
        raise ValueError(f"peft.aggregation {agg!r} combines the factors itself, so it composes with a strategy "
                         f"whose reduce is the weighted mean (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad), "
                         f"not {s.strategy['name']!r}; use aggregation: fedit for a robust strategy")
    check_server_opt(lora_variant(agg), strategy.server_opt)
