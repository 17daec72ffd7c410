"""The base model's content hash at Join: a device fine-tuning other pre-trained weights than
the server's would send adapters that mean nothing for the server's base, so it is refused
before its first task, with both hashes in the message.

A device declares its base with the Join capability ``base_sha256`` (``fedkit client
--base-model DIR`` computes it from the folder, :func:`fedkit.peft.hf.folder_sha256`); the
server admits it when the hash is its own. A device that declares none is still checked at its
first task: the model spec carries the server's hash and :func:`fedkit.peft.model.build`
refuses a different local base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from fedkit.peft.model import base_mismatch

CAPABILITY = "base_sha256"


def base_capabilities(folder: str | Path | None) -> dict[str, str]:
    """The Join capabilities declaring the device's base model folder (none: empty)."""
    if folder is None:
        return {}
    from fedkit.peft.hf import folder_sha256

    return {CAPABILITY: folder_sha256(folder)}


def admit_base(expected: str | None) -> Callable[[str, Mapping[str, str]], str | None]:
    """A Join check for ``fedkit.transport.server.GrpcServer(admit=...)``: refuse a device that
    declares another base than ``expected`` (None: the scenario has no pre-trained base)."""

    def admit(name: str, capabilities: Mapping[str, str]) -> str | None:
        theirs = capabilities.get(CAPABILITY)
        if expected is None or theirs is None or theirs == expected:
            return None
        return f"client {name}: {base_mismatch(expected, theirs)}"

    return admit
