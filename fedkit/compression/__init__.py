"""Codecs for update exchange: real bytes, exact accounting."""

from fedkit.compression import identity as _identity  # noqa: F401  (registers "identity")
from fedkit.compression.base import REGISTRY, Codec, decode, make, register

__all__ = ["REGISTRY", "Codec", "decode", "make", "register"]
