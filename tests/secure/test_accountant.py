"""The accountant agrees with dp-accounting called directly and behaves monotonically."""

from __future__ import annotations

import pytest

pytest.importorskip("dp_accounting")

from dp_accounting import dp_event as ev  # noqa: E402
from dp_accounting import privacy_accountant as pa  # noqa: E402
from dp_accounting.pld import pld_privacy_accountant  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant  # noqa: E402

from fedkit.secure.accountant import epsilon, noise_for_epsilon  # noqa: E402

DELTA = 1e-5


def direct(z: float, q: float, t: int, acc: object) -> float:
    acc.compose(ev.SelfComposedDpEvent(ev.PoissonSampledDpEvent(q, ev.GaussianDpEvent(z)), t))
    return acc.get_epsilon(DELTA)


def test_rdp_and_pld_match_the_reference_table() -> None:
    q, z, t = 100 / 3400, 1.0, 1500  # REFERENCES.md E3: RDP 8.159, PLD 7.459
    rdp = epsilon(z, q, t, DELTA, method="rdp")
    pld = epsilon(z, q, t, DELTA, method="pld")
    assert rdp == pytest.approx(8.159, abs=1e-3)
    assert pld == pytest.approx(7.459, abs=1e-3)


def test_values_agree_with_the_library_called_directly() -> None:
    q, z, t = 0.05, 2.0, 100
    rdp = epsilon(z, q, t, DELTA, method="rdp")
    pld = epsilon(z, q, t, DELTA, method="pld")
    assert rdp == direct(z, q, t, rdp_privacy_accountant.RdpAccountant())
    assert pld == direct(z, q, t, pld_privacy_accountant.PLDAccountant())
    assert pld < rdp  # RDP is the conservative one


def test_fixed_size_sampling_is_replace_one_rdp() -> None:
    got = epsilon(1.5, 0.1, 50, DELTA, sampling="fixed", population=200)
    acc = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=pa.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(
        ev.SelfComposedDpEvent(
            ev.SampledWithoutReplacementDpEvent(200, 20, ev.GaussianDpEvent(1.5)), 50
        )
    )
    assert got == acc.get_epsilon(DELTA)
    assert got > epsilon(1.5, 0.1, 50, DELTA)  # replacing a client costs more than removing one


def test_epsilon_grows_with_rounds_and_q_and_falls_with_noise() -> None:
    by_rounds = [epsilon(2.0, 0.05, t, DELTA) for t in (0, 10, 100, 1000)]
    assert by_rounds[0] == 0.0
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 4
    by_noise = [epsilon(z, 0.05, 100, DELTA) for z in (1.0, 2.0, 4.0, 8.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4
    by_q = [epsilon(2.0, q, 100, DELTA) for q in (0.01, 0.05, 0.2, 1.0)]
    assert by_q == sorted(by_q) and len(set(by_q)) == 4


def test_noise_for_epsilon_is_the_smallest_noise_within_budget() -> None:
    rtol = 1e-3
    # q = 1 (every client every round, e.g. local DP) keeps each evaluation cheap
    z = noise_for_epsilon(10.0, 1.0, 50, DELTA, rtol=rtol)
    assert epsilon(z, 1.0, 50, DELTA) <= 10.0
    assert epsilon(z * (1 - 2 * rtol), 1.0, 50, DELTA) > 10.0
    # a larger budget needs less noise, and the same holds under subsampling
    assert noise_for_epsilon(20.0, 1.0, 50, DELTA, rtol=rtol) < z
    zq = noise_for_epsilon(1.0, 0.01, 50, DELTA, rtol=1e-2)
    assert epsilon(zq, 0.01, 50, DELTA) <= 1.0 < epsilon(zq * 0.98, 0.01, 50, DELTA)


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="method='pld' cannot account fixed-size sampling"):
        epsilon(1.0, 0.1, 10, DELTA, method="pld", sampling="fixed", population=100)
    with pytest.raises(ValueError, match="unknown accounting method 'prv'"):
        epsilon(1.0, 0.1, 10, DELTA, method="prv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling='fixed' needs population"):
        epsilon(1.0, 0.1, 10, DELTA, sampling="fixed")
    with pytest.raises(ValueError, match="q \\* population = 3.3 is not a whole number"):
        epsilon(1.0, 0.1, 10, DELTA, sampling="fixed", population=33)
    with pytest.raises(ValueError, match="unknown sampling 'uniform'"):
        epsilon(1.0, 0.1, 10, DELTA, sampling="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="q must be in \\(0, 1\\]"):
        epsilon(1.0, 1.5, 10, DELTA)
    with pytest.raises(ValueError, match="delta must be in \\(0, 1\\)"):
        epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(ValueError, match="noise_multiplier must be in \\(0, inf\\]"):
        epsilon(0.0, 0.1, 10, DELTA)
    with pytest.raises(ValueError, match="target_epsilon must be in"):
        noise_for_epsilon(-1.0, 0.1, 10, DELTA)


def test_epsilon_curve_agrees_with_the_library_round_by_round() -> None:
    from fedkit.secure.accountant import epsilon_curve

    q, z, t = 0.1, 1.3, 6
    rdp = epsilon_curve(z, q, t, DELTA, method="rdp")
    pld = epsilon_curve(z, q, t, DELTA, method="pld")
    for k in (1, 3, 6):
        assert rdp[k - 1] == pytest.approx(direct(z, q, k, rdp_privacy_accountant.RdpAccountant()), rel=1e-12)
        assert pld[k - 1] == pytest.approx(direct(z, q, k, pld_privacy_accountant.PLDAccountant()), rel=1e-6)
    assert list(rdp) == sorted(rdp) and list(pld) == sorted(pld)  # ε grows with rounds
    fixed = epsilon_curve(z, 0.25, 3, DELTA, sampling="fixed", population=40)
    assert fixed[-1] == epsilon(z, 0.25, 3, DELTA, sampling="fixed", population=40)
    louder = epsilon_curve(2 * z, q, t, DELTA, method="rdp")
    assert all(a < b for a, b in zip(louder, rdp, strict=True))  # and falls with noise
