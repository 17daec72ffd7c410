from __future__ import annotations

import numpy as np
import pytest

from fedkit.secure import crypto


def _sk(i: int) -> bytes:
    return bytes([i]) * 32


def test_agreement_is_symmetric_and_labelled() -> None:
    a, b = _sk(1), _sk(2)
    k_ab = crypto.agree(a, crypto.public_key(b), b"mask")
    assert k_ab == crypto.agree(b, crypto.public_key(a), b"mask")
    assert k_ab != crypto.agree(a, crypto.public_key(b), b"share")
    assert len(k_ab) == 32


def test_seal_open_and_tampering_refused() -> None:
    key = crypto.derive(b"k" * 32, b"test")
    ct = crypto.seal(key, b"n" * 12, b"secret share", b"round1|a|b")
    assert crypto.open_sealed(key, ct, b"round1|a|b") == b"secret share"
    flipped = ct[:-1] + bytes([ct[-1] ^ 1])
    for bad, aad in [(flipped, b"round1|a|b"), (ct, b"round1|b|a"), (ct[:20], b"round1|a|b")]:
        with pytest.raises(crypto.AuthenticationError):
            crypto.open_sealed(key, bad, aad)
    with pytest.raises(crypto.AuthenticationError):
        crypto.open_sealed(crypto.derive(b"x" * 32, b"test"), ct, b"round1|a|b")


def test_prg_is_deterministic_and_pairwise_masks_cancel() -> None:
    s1, s2 = _sk(3), _sk(4)
    m = crypto.prg(s1, 1000)
    assert m.dtype == np.uint32 and m.shape == (1000,)
    assert np.array_equal(m, crypto.prg(s1, 1000))
    assert not np.array_equal(m, crypto.prg(s2, 1000))
    assert np.array_equal(crypto.prg(s1, 10), m[:10])
    assert crypto.prg(s1, 7, np.uint64).dtype == np.uint64
    # roughly uniform over 2^32: mean near 2^31
    assert abs(m.astype(np.float64).mean() / 2**31 - 1) < 0.05
    x = np.arange(1000, dtype=np.uint32)
    assert np.array_equal((x + m) + (x - m), 2 * x)  # +m and -m cancel mod 2^32


def test_bad_lengths_raise() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.public_key(b"short")
    with pytest.raises(ValueError, match="nonce"):
        crypto.seal(_sk(1), b"n", b"x", b"")
    with pytest.raises(ValueError, match="unsigned"):
        crypto.prg(_sk(1), 3, np.int32)
