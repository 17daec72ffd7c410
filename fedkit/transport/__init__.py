"""gRPC transport: moves tasks and replies between the round engine and real clients.

It decides nothing about the algorithm. The server side is :class:`GrpcServer` (its ``.link`` is
the engine's :class:`~fedkit.runtime.link.Link`); the device side is :func:`run_client`.
Split learning rides the same session: ``GrpcServer(split=endpoint)`` serves the ``Split``
stream, and a :class:`SplitDialer` passed to ``run_client(split=...)`` opens it.
"""

from fedkit.transport.certs import make_certs
from fedkit.transport.client import GrpcSplitStream, SplitDialer, run_client
from fedkit.transport.security import (
    Authenticator,
    AuthError,
    ClientTls,
    ServerTls,
    TokenAuth,
    hash_token,
    new_token,
)
from fedkit.transport.server import GrpcLink, GrpcServer, Validator

__all__ = [
    "AuthError",
    "Authenticator",
    "ClientTls",
    "GrpcLink",
    "GrpcServer",
    "GrpcSplitStream",
    "ServerTls",
    "SplitDialer",
    "TokenAuth",
    "Validator",
    "hash_token",
    "make_certs",
    "new_token",
    "run_client",
]
