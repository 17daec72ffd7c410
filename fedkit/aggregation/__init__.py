"""Server-side aggregation: a reduce function composed with a server optimizer.

``Aggregator(reduce, server_opt)`` turns client updates (deltas, local - global) into new global
params; ``make_aggregator(name, **params)`` builds the named strategies (fedavg, fedadam, krum...).
State is a plain dict of arrays; checkpoint it with ``state_to_arrays`` / ``state_from_arrays``.
Asynchronous strategies (FedAsync, FedBuff, FedCompass) are values with pure per-arrival methods,
built by ``make_async(name, **params)``; staleness discounts come from ``make_staleness``.
LoRA adapter variants (FedIT, FFA-LoRA, FedSA-LoRA, FedEx-LoRA, FLoRA, FlexLoRA, FedSVD) are in
``lora.py``: ``make_lora_aggregator(name, names, shapes, ...)`` over named adapter tensors.
"""

from fedkit.aggregation.async_strategies import ASYNC_STRATEGIES, make_async
from fedkit.aggregation.base import (
    Aggregator,
    Reduce,
    Reweight,
    ServerOpt,
    State,
    state_from_arrays,
    state_to_arrays,
)
from fedkit.aggregation.fedasync import FedAsync
from fedkit.aggregation.fedau import FedAUReweight
from fedkit.aggregation.fedbuff import FedBuff
from fedkit.aggregation.fedcompass import Compass
from fedkit.aggregation.lora import LORA_AGGREGATIONS, LoraAggregator, make_lora_aggregator
from fedkit.aggregation.reduce import krum, mean, median, sum_over, trimmed_mean, weighted_mean
from fedkit.aggregation.robust import (
    ROOT_CLIENT,
    bulyan,
    centered_clip,
    centered_clipping,
    fltrust,
    norm_bound,
)
from fedkit.aggregation.server_opt import adagrad, adam, momentum, sgd, yogi
from fedkit.aggregation.staleness import STALENESS, make_staleness
from fedkit.aggregation.strategies import STRATEGIES, client_config, make_aggregator

__all__ = [
    "ASYNC_STRATEGIES",
    "LORA_AGGREGATIONS",
    "STALENESS",
    "ROOT_CLIENT",
    "STRATEGIES",
    "Aggregator",
    "Compass",
    "FedAUReweight",
    "FedAsync",
    "FedBuff",
    "LoraAggregator",
    "Reduce",
    "Reweight",
    "ServerOpt",
    "State",
    "adagrad",
    "adam",
    "bulyan",
    "centered_clip",
    "centered_clipping",
    "client_config",
    "fltrust",
    "krum",
    "make_aggregator",
    "make_async",
    "make_lora_aggregator",
    "make_staleness",
    "mean",
    "median",
    "momentum",
    "norm_bound",
    "sgd",
    "state_from_arrays",
    "state_to_arrays",
    "sum_over",
    "trimmed_mean",
    "weighted_mean",
    "yogi",
]
