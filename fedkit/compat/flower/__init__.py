"""Flower interoperability, both directions (optional extra: ``pip install 'fedkit[flower]'``).

fedkit inside Flower:

- :class:`FedkitStrategy` runs any fedkit aggregator (``make_aggregator(name, **params)``,
  robust ones included) as a Flower ``Strategy`` in a ``ServerApp``;
  :class:`FedkitLegacyStrategy` does the same for the older ``flwr.server.strategy`` interface.
- :func:`uplink_mod` is a Flower client mod that sends fedkit's compressed frame of the update
  (``topk(ratio=0.1)|quant(bits=8)|zstd``...) instead of the dense model; :class:`Decoding`
  wraps any Flower strategy so it reads those frames (``FedkitStrategy`` reads them natively).

Flower inside fedkit:

- :func:`flower_handlers` / :func:`flower_host` turn a Flower ``NumPyClient``, ``Client``,
  ``client_fn`` or ``ClientApp`` into a fedkit client, so existing Flower client code joins a
  fedkit server (in-process or over gRPC) unchanged.
- :func:`run_flower` runs a fedkit scenario on Flower's simulation engine (``fedkit run
  SCENARIO --engine flower``), for side-by-side comparison with fedkit's own run.

This package is the only place that imports ``flwr``. Flower's telemetry is switched off
(``FLWR_TELEMETRY_ENABLED=0``) unless the environment already says otherwise: nothing leaves
the machine.
"""

from fedkit.compat.flower._flwr import FLWR_VERSION
from fedkit.compat.flower.client import flower_handlers, flower_host
from fedkit.compat.flower.engine import run_flower
from fedkit.compat.flower.mods import Decoding, uplink_mod
from fedkit.compat.flower.records import (
    frame_to_record,
    message_nbytes,
    params_to_record,
    record_frame,
    record_to_params,
)
from fedkit.compat.flower.strategy import FedkitLegacyStrategy, FedkitStrategy

__all__ = [
    "FLWR_VERSION",
    "Decoding",
    "FedkitLegacyStrategy",
    "FedkitStrategy",
    "flower_handlers",
    "flower_host",
    "frame_to_record",
    "message_nbytes",
    "params_to_record",
    "record_frame",
    "record_to_params",
    "run_flower",
    "uplink_mod",
]
