"""Split learning: cut a model at named modules, five schemes over a per-batch channel.

:mod:`~fedkit.split.partition` cuts; :mod:`~fedkit.split.channel` is the client <-> server seam
(with the client's and the server's codec halves); :mod:`~fedkit.split.wire` the frames and
the endpoint every transport calls; :mod:`~fedkit.split.server` and :mod:`~fedkit.split.client`
are the two sides as values; :mod:`~fedkit.split.endpoint` is the server end the round engine
drives (:mod:`fedkit.runtime.split`) and :mod:`~fedkit.split.local` its in-process transport;
:mod:`~fedkit.split.schemes` documents the schemes and runs the reference in-process round;
:mod:`~fedkit.split.bottleneck` adds a learned bottleneck at the cut; :mod:`~fedkit.split.privacy`
holds the NoPeek and activation-noise defences and the label-leakage and reconstruction attacks.
"""

from fedkit.split.bottleneck import with_bottleneck
from fedkit.split.channel import (
    ByteCount,
    ClientHalf,
    LocalChannel,
    ServerHalf,
    SplitBatch,
    SplitChannel,
    StreamChannel,
)
from fedkit.split.client import ClientConfig, client_params, train_split
from fedkit.split.endpoint import Endpoint
from fedkit.split.local import LocalConnect, LocalStream
from fedkit.split.partition import SplitModel, cut_names, split
from fedkit.split.privacy import Defence, distance_correlation, evaluate_privacy
from fedkit.split.schemes import SCHEMES, SplitSetup, initial, make_setup, run_round, whole
from fedkit.split.server import (
    LocalServer,
    PartState,
    ServerConfig,
    ServerState,
    average_parts,
    server_begin_round,
    server_end_round,
    server_handle,
    server_init,
)

__all__ = [
    "SCHEMES", "ByteCount", "ClientConfig", "ClientHalf", "Defence", "Endpoint", "LocalChannel",
    "LocalConnect", "LocalServer", "LocalStream", "PartState", "ServerConfig", "ServerHalf",
    "ServerState", "SplitBatch", "SplitChannel", "SplitModel", "SplitSetup", "StreamChannel",
    "average_parts", "client_params", "cut_names", "distance_correlation", "evaluate_privacy",
    "initial", "make_setup",
    "run_round", "server_begin_round", "server_end_round", "server_handle", "server_init",
    "split", "train_split", "whole", "with_bottleneck",
]
