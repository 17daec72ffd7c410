"""Cryptographic building blocks of secure aggregation, all from the `cryptography` package.

Reference: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, section 3 (key agreement, authenticated encryption, PRG).

- key agreement: X25519 then HKDF-SHA256, with an ``info`` label per use, so the mask seed
  and the share-encryption key of one pair are unrelated;
- authenticated encryption: ChaCha20-Poly1305 with the associated data binding
  (round, sender, receiver), so a ciphertext replayed to another pair or round is refused;
- PRG: the ChaCha20 keystream of a 32-byte seed read as little-endian uint32/uint64 words,
  uniform mod 2^32 / 2^64.

Keys are raw 32-byte values so that client state stays a plain, serialisable value.
"""

from __future__ import annotations

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12


class AuthenticationError(ValueError):
    """A ciphertext failed its authentication tag: tampered, truncated or misaddressed."""


def derive(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` under the label ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def public_key(sk: bytes) -> bytes:
    """The X25519 public key (32 bytes) of a raw 32-byte private key."""
    _check_len("private key", sk)
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


def private_key(sk: bytes) -> X25519PrivateKey:
    """Load a raw private key once (loading costs as much as an exchange) for many ``agree``."""
    _check_len("private key", sk)
    return X25519PrivateKey.from_private_bytes(sk)


def agree(sk: bytes | X25519PrivateKey, peer_pk: bytes, info: bytes) -> bytes:
    """A 32-byte key shared by the two ends: HKDF(X25519(sk, peer_pk), info)."""
    key = sk if isinstance(sk, X25519PrivateKey) else private_key(sk)
    _check_len("public key", peer_pk)
    return derive(key.exchange(X25519PublicKey.from_public_bytes(peer_pk)), info)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || ChaCha20-Poly1305(key, nonce, plaintext, aad)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"seal: nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of ``seal``'s output; AuthenticationError if anything was changed."""
    if len(sealed) < NONCE_BYTES + 16:
        raise AuthenticationError("ciphertext too short to carry a nonce and a tag")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as e:
        raise AuthenticationError("ciphertext failed authentication") from e


_PRG_NONCE = b"\x00" * 16
_MAX_PRG_BYTES = 2**38  # keystream of one (seed, nonce) pair is 2^32 blocks of 64 bytes


def prg(seed: bytes, n: int, dtype: np.dtype | type = np.uint32) -> np.ndarray:
    """``n`` pseudorandom words of ``dtype`` (uint32 or uint64) expanded from a 32-byte seed."""
    _check_len("PRG seed", seed)
    dt = np.dtype(dtype).newbyteorder("<")
    if dt.kind != "u":
        raise ValueError(f"prg: dtype must be unsigned, got {dt}")
    nbytes = int(n) * dt.itemsize
    if not 0 <= nbytes <= _MAX_PRG_BYTES:
        raise ValueError(f"prg: cannot expand {n} words from one seed")
    words = np.frombuffer(stream(seed, nbytes), dtype=dt)
    return words.astype(np.dtype(dtype), copy=False)


def stream(seed: bytes, nbytes: int) -> bytes:
    """``nbytes`` of ChaCha20 keystream from a 32-byte seed (the PRG behind ``prg``)."""
    _check_len("PRG seed", seed)
    if not 0 <= nbytes <= _MAX_PRG_BYTES:
        raise ValueError(f"stream: cannot expand {nbytes} bytes from one seed")
    enc = Cipher(algorithms.ChaCha20(seed, _PRG_NONCE), mode=None).encryptor()
    return enc.update(bytes(nbytes))


def _check_len(what: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} bytes")
