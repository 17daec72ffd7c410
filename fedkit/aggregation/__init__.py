"""Server-side aggregation: a reduce function composed with a server optimizer.

``Aggregator(reduce, server_opt)`` turns client updates (deltas, local - global) into new global
params; ``make_aggregator(name, **params)`` builds the named strategies (fedavg, fedadam, krum...).
State is a plain dict of arrays; checkpoint it with ``state_to_arrays`` / ``state_from_arrays``.
"""

from fedkit.aggregation.base import (
    Aggregator,
    Reduce,
    ServerOpt,
    State,
    state_from_arrays,
    state_to_arrays,
)
from fedkit.aggregation.reduce import krum, mean, median, trimmed_mean, weighted_mean
from fedkit.aggregation.robust import (
    ROOT_CLIENT,
    bulyan,
    centered_clip,
    centered_clipping,
    fltrust,
    norm_bound,
)
from fedkit.aggregation.server_opt import adagrad, adam, momentum, sgd, yogi
from fedkit.aggregation.strategies import STRATEGIES, client_config, make_aggregator

__all__ = [
    "ROOT_CLIENT",
    "STRATEGIES",
    "Aggregator",
    "Reduce",
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
    "mean",
    "median",
    "momentum",
    "norm_bound",
    "sgd",
    "state_from_arrays",
    "state_to_arrays",
    "trimmed_mean",
    "weighted_mean",
    "yogi",
]
