"""Typed task configuration: what a client needs to run one task, frozen and versioned.

The server builds one of these per task; on the wire it travels as its JSON object
(``TaskHeader.config_json``) and the client parses it back with :func:`parse`, where an unknown
key, a wrong type or a newer schema version is an error naming the field, never silently
dropped. Each task kind has its configuration class in :data:`KINDS`; split-learning steps and
secure-aggregation stages add theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError

from fedkit.models.train import TrainConfig
from fedkit.types import Strict

SCHEMA = 1  # the schema_version this client and server speak


class ModelRef(Strict):
    """How to build the model: its spec (registry name or import path plus kwargs) and shape."""

    spec: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int = Field(ge=1)


class DownlinkRef(Strict):
    """How to rebuild the params from the payload (fedkit/runtime/downlink.py)."""

    mode: Literal["full", "delta"] = "full"
    version: int | None = None  # round whose reference this payload establishes
    base: int | None = None  # delta mode: the reference round the client must hold


class DpTask(Strict):
    """Differential privacy on the client (fedkit/runtime/privacy.py): clip the delta to
    ``clip_norm`` before it is encoded; ``noise_multiplier > 0`` (local DP) adds
    ``N(0, (z C)^2 I)`` too; ``report_unclipped``: send adaptive clipping's one bit."""

    clip_norm: float = Field(gt=0)
    noise_multiplier: float = Field(default=0.0, ge=0)
    report_unclipped: bool = False


class TrainTask(Strict):
    schema_version: Literal[1] = 1
    seed: int
    model: ModelRef
    train: TrainConfig
    uplink: str = "identity"
    downlink: DownlinkRef = DownlinkRef()
    # tasks this client already got this round: an asynchronous policy may send a fast client
    # several between two aggregations, all from the same model; this keys their draws apart
    repeat: int = Field(default=0, ge=0)
    dp: DpTask | None = None


class EvaluateTask(Strict):
    schema_version: Literal[1] = 1
    seed: int
    model: ModelRef
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # train.device: where the client evaluates
    downlink: DownlinkRef = DownlinkRef()


class SFPromptTask(Strict):
    """SFPrompt's knobs (fedkit/split/sfprompt.py): keep the hardest ``gamma`` of each client's
    samples (EL2N, scored by the whole ``model`` over the wire or the ``local`` head -> tail) for
    split training; ``local_epochs`` of the body-skipping local-loss step."""

    gamma: float = Field(default=0.5, gt=0, le=1, allow_inf_nan=False)
    local_epochs: int = Field(default=1, ge=0)
    score: Literal["model", "local"] = "model"  # EL2N through the whole model (over the wire) or head -> tail


class SplitTrainTask(Strict):
    """One client's local epochs of split learning (fedkit/split/): the client part comes as
    the payload, batches go over the task's split stream, the reply carries the client part's
    delta through the ``uplink`` codec. ``activations`` encodes every client -> server tensor;
    ``gradients`` names the codec of the server's tensors (decoding needs no more than the frame)."""

    schema_version: Literal[1] = 1
    seed: int
    model: ModelRef
    scheme: Literal["vanilla", "splitfed_v1", "splitfed_v2", "ushape", "local_loss", "sfprompt"]
    cuts: tuple[str, ...] = Field(min_length=1, max_length=2)
    sfprompt: SFPromptTask | None = None  # scheme sfprompt only
    activations: str = "identity"
    gradients: str = "identity"
    bottleneck: int | None = Field(default=None, ge=1)
    nopeek: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # fedkit.split.privacy.Defence
    noise: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    train: TrainConfig
    uplink: str = "identity"
    downlink: DownlinkRef = DownlinkRef()


class SecAggField(Strict):
    """How a client puts its update into the field before masking (fedkit/secure/field.py):
    ``weight x delta`` clipped to [-clip, clip] and rounded stochastically to 0..levels, in
    words of ``bits``. ``weighting: examples`` scales by ``min(n, max_weight) / max_weight``;
    the capped example count rides inside the masked sum too, so the server learns only the
    total (fedkit/runtime/secagg.py)."""

    clip: float = Field(gt=0, allow_inf_nan=False)
    levels: int = Field(ge=1)
    bits: Literal[32, 64] = 32
    weighting: Literal["examples", "uniform"] = "examples"
    max_weight: int = Field(ge=1)


class SecAggAdvertiseTask(TrainTask):
    """Secure aggregation's first exchange: train like ``train``, then put the update into the
    field and advertise two public keys (the update stays on the client until it is masked)."""

    secagg: SecAggField


class SecAggStageTask(Strict):
    """One of secure aggregation's later exchanges (share keys, masked input, unmask): the
    payload is the server's protocol message; all else the client holds from the round."""

    schema_version: Literal[1] = 1
    seed: int


KINDS: dict[str, type[Strict]] = {
    "train": TrainTask, "evaluate": EvaluateTask, "split_train": SplitTrainTask,
    "secagg_advertise": SecAggAdvertiseTask, "secagg_share": SecAggStageTask,
    "secagg_masked": SecAggStageTask, "secagg_unmask": SecAggStageTask,
}

UPDATE_KINDS = frozenset({"train", "split_train", "secagg_masked"})
"""Kinds whose reply stands for the client's model update: the engine counts the dense float32
frame against it (``ratio_up``). A masked input does; keys, shares and unmasking are overhead."""


def parse(kind: str, config: Any) -> Strict:
    """The typed configuration of a task of ``kind`` (a ValueError names what is wrong)."""
    cls = KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown task kind {kind[:64]!r}; this client serves: {', '.join(KINDS)}")
    if isinstance(config, cls):
        return config
    if not isinstance(config, Mapping):
        raise ValueError(f"{kind} task config must be an object, got {type(config).__name__}")
    try:
        return cls.model_validate(dict(config))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()[:5]
        )
        raise ValueError(f"{kind} task config rejected: {problems}") from None
