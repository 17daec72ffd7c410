"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1).

Reference: A. Shamir, "How to share a secret", CACM 22(11), 1979.

A secret s is the constant term of a random polynomial f of degree t - 1; holder j gets
(x_j, f(x_j)). Any t shares give s back by Lagrange interpolation at 0; t - 1 shares are
independent of s. The field is the Mersenne prime M521 so that a whole 32-byte secret (an
X25519 private key or a mask seed, 256 bits) is one field element: no chunking, one share per
holder per secret. Written here (about 40 lines) rather than taken from a package, so the
coefficients come from the caller's keyed stream instead of a hidden global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

PRIME = 2**521 - 1
"""The Mersenne prime M521: larger than any 256-bit secret."""

ELEMENT_BYTES = (PRIME.bit_length() + 7) // 8  # 66
SHARE_BYTES = 2 + ELEMENT_BYTES
"""A share on the wire: 2-byte x (holder index, 1..65535) then 66-byte big-endian y."""

Share = tuple[int, int]
"""(x, y) with 1 <= x < 2^16 and 0 <= y < PRIME."""


def split(secret: int, t: int, xs: Sequence[int], coeffs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` at the points ``xs``; ``coeffs`` are the t - 1 random coefficients.

    >>> s = split(42, 2, [1, 2, 3], [7])            # f(x) = 42 + 7x
    >>> s, reconstruct(s[1:], 2)
    ([(1, 49), (2, 56), (3, 63)], 42)
    """
    if not 1 <= t <= len(xs):
        raise ValueError(f"shamir: threshold t={t} must be in 1..{len(xs)} (number of holders)")
    if len(coeffs) != t - 1:
        raise ValueError(f"shamir: need t - 1 = {t - 1} coefficients, got {len(coeffs)}")
    if not 0 <= secret < PRIME:
        raise ValueError("shamir: secret must be an integer in [0, PRIME)")
    _check_xs(xs)
    poly = [secret, *(c % PRIME for c in coeffs)]
    out = []
    for x in xs:
        y = 0
        for c in reversed(poly):  # Horner
            y = (y * x + c) % PRIME
        out.append((x, y))
    return out


def reconstruct(shares: Sequence[Share], t: int) -> int:
    """The secret from any ``t`` of its shares (the first t are used)."""
    if t < 1 or len(shares) < t:
        raise ValueError(f"shamir: need {t} shares to reconstruct, got {len(shares)}")
    pts = list(shares[:t])
    xs = [x for x, _ in pts]
    _check_xs(xs)
    secret = 0
    for j, (xj, yj) in enumerate(pts):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    return secret


def share_to_bytes(share: Share) -> bytes:
    x, y = share
    return x.to_bytes(2, "big") + y.to_bytes(ELEMENT_BYTES, "big")


def share_from_bytes(buf: bytes) -> Share:
    if len(buf) != SHARE_BYTES:
        raise ValueError(f"shamir: a share is {SHARE_BYTES} bytes, got {len(buf)}")
    x, y = int.from_bytes(buf[:2], "big"), int.from_bytes(buf[2:], "big")
    if x == 0 or y >= PRIME:
        raise ValueError("shamir: share out of range (x = 0 or y >= PRIME)")
    return x, y


def _check_xs(xs: Sequence[int]) -> None:
    if any(not 1 <= x < 2**16 for x in xs):
        raise ValueError("shamir: share points x must be in 1..65535")
    if len(set(xs)) != len(xs):
        raise ValueError("shamir: share points x must be distinct")
