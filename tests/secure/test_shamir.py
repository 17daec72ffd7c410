from __future__ import annotations

import itertools

import pytest

from fedkit.secure import shamir


def test_hand_computed_polynomial() -> None:
    # f(x) = 42 + 7x + 3x^2
    shares = shamir.split(42, 3, [1, 2, 3, 4], [7, 3])
    assert shares == [(1, 52), (2, 68), (3, 90), (4, 118)]
    assert shamir.reconstruct([(4, 118), (2, 68), (3, 90)], 3) == 42


def test_any_t_of_n_recover_a_256_bit_secret() -> None:
    secret = 2**256 - 12345
    coeffs = [(2**400 + 17 * i) % shamir.PRIME for i in range(3)]
    shares = shamir.split(secret, 4, list(range(1, 8)), coeffs)
    for subset in itertools.combinations(shares, 4):
        assert shamir.reconstruct(subset, 4) == secret
    # t - 1 shares padded with a wrong one give a different value
    assert shamir.reconstruct([*shares[:3], (8, 1)], 4) != secret


def test_share_bytes_round_trip_and_bad_bytes() -> None:
    s = shamir.split(5, 2, [3, 9], [shamir.PRIME - 1])[1]
    raw = shamir.share_to_bytes(s)
    assert len(raw) == shamir.SHARE_BYTES
    assert shamir.share_from_bytes(raw) == s
    with pytest.raises(ValueError, match="bytes"):
        shamir.share_from_bytes(raw[:-1])
    with pytest.raises(ValueError, match="out of range"):
        shamir.share_from_bytes(b"\x00\x00" + raw[2:])


@pytest.mark.parametrize(
    ("t", "xs", "coeffs", "match"),
    [(0, [1, 2], [], "threshold"), (3, [1, 2], [1, 2], "threshold"),
     (2, [1, 2], [], "coefficients"), (2, [1, 1], [5], "distinct"), (2, [0, 1], [5], "x")],
)
def test_bad_split_arguments(t: int, xs: list[int], coeffs: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        shamir.split(1, t, xs, coeffs)


def test_too_few_shares_refused() -> None:
    with pytest.raises(ValueError, match="need 3 shares"):
        shamir.reconstruct([(1, 2), (2, 3)], 3)
