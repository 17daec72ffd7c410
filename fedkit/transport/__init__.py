"""gRPC transport: moves tasks and replies between the round engine and real clients.

It decides nothing about the algorithm. The server side is :class:`GrpcServer` (its ``.link`` is
the engine's :class:`~fedkit.runtime.link.Link`); the device side is :func:`run_client`.
"""

from fedkit.transport.certs import make_certs
from fedkit.transport.client import run_client
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
    "ServerTls",
    "TokenAuth",
    "Validator",
    "hash_token",
    "make_certs",
    "new_token",
    "run_client",
]
