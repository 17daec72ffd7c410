import math

import numpy as np
import pytest

from fedkit.sim.availability import ALWAYS, MarkovSpec, windows
from fedkit.sim.devices import (
    TRAIN_COST,
    Device,
    DeviceProfile,
    assign,
    fate,
    largest_remainder,
    steps_within,
    summarize,
    task_time,
)

PHONE = DeviceProfile("phone", samples_per_s=400, up_mbps=5, down_mbps=20, latency_ms=60, spread=0.5)
RPI = DeviceProfile("rpi4", samples_per_s=150, up_mbps=20, down_mbps=50, latency_ms=10)
PROFILES = {"phone": PHONE, "rpi4": RPI}
NAMES = [f"client_{i:03d}" for i in range(10)]


def dev(**over) -> Device:
    base = dict(client="c", profile="p", samples_per_s=100.0, up_mbps=8.0, down_mbps=16.0,
                latency_ms=50.0, availability=ALWAYS, dropout=0.0)
    return Device(**(base | over))


def test_task_time_by_hand() -> None:
    # 200 samples x 3 / 100 = 6 s; 2 MB down at 16 Mbit/s = 1 s + 50 ms; 1 MB up at 8 Mbit/s = 1 s + 50 ms
    t = task_time(dev(), samples=200, bytes_down=2_000_000, bytes_up=1_000_000)
    assert TRAIN_COST == 3.0
    assert (t.compute_s, t.down_s, t.up_s) == pytest.approx((6.0, 1.05, 1.05))
    assert t.total_s == pytest.approx(8.1)


def test_fedscale_formula_is_the_special_case_without_latency() -> None:
    # FedScale: 3 x batch x steps x ms_per_sample / 1000 + (up_kbit + down_kbit) / kbps
    ms, kbps, batch, steps, kbits = 162.0, 5648.1, 20, 5, 4000.0
    d = dev(samples_per_s=1000 / ms, up_mbps=kbps / 1000, down_mbps=kbps / 1000, latency_ms=0)
    t = task_time(d, batch * steps, int(kbits * 1000 / 8), int(kbits * 1000 / 8))
    assert t.total_s == pytest.approx(3 * batch * steps * ms / 1000 + 2 * kbits / kbps)


def test_steps_within_fits_partial_work_before_a_deadline() -> None:
    d = dev()  # one step of 10 samples = 0.3 s; wire = 1.05 + 1.05 s
    assert steps_within(d, 5.0, 10, 100, 2_000_000, 1_000_000) == 9  # 2.1 + 9 x 0.3 = 4.8
    assert steps_within(d, 100.0, 10, 20, 2_000_000, 1_000_000) == 20  # capped
    assert steps_within(d, 2.0, 10, 20, 2_000_000, 1_000_000) == 0  # cannot even reply
    n = steps_within(d, 2.1 + 7 * 0.3, 10, 100, 2_000_000, 1_000_000)
    assert n in (6, 7) and task_time(d, n * 10, 2_000_000, 1_000_000).total_s <= 2.1 + 7 * 0.3


def test_largest_remainder_counts_sum_to_n() -> None:
    assert largest_remainder(10, {"a": 0.7, "b": 0.3}) == {"a": 7, "b": 3}
    assert largest_remainder(3, {"a": 0.5, "b": 0.5}) == {"a": 2, "b": 1}  # tie: listed first
    assert largest_remainder(7, {"a": 0.2, "b": 0.35, "c": 0.45}) == {"a": 1, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="sum to 1"):
        largest_remainder(10, {"a": 0.7, "b": 0.2})


def test_assign_by_fractions_is_exact_and_deterministic() -> None:
    a = assign(NAMES, {"phone": 0.7, "rpi4": 0.3}, PROFILES, seed=4)
    b = assign(list(reversed(NAMES)), {"phone": 0.7, "rpi4": 0.3}, PROFILES, seed=4)
    assert a == b and sorted(a) == NAMES
    assert sum(d.profile == "phone" for d in a.values()) == 7
    c = assign(NAMES, {"phone": 0.7, "rpi4": 0.3}, PROFILES, seed=5)
    assert [d.profile for d in a.values()] != [d.profile for d in c.values()]


def test_speeds_are_log_normal_around_the_profile_median() -> None:
    names = [f"c{i}" for i in range(2000)]
    ds = assign(names, {"phone": 1.0}, PROFILES, seed=0)
    logs = np.log([d.samples_per_s for d in ds.values()])
    assert np.mean(logs) == pytest.approx(math.log(400), abs=0.05)
    assert np.std(logs) == pytest.approx(0.5, abs=0.03)
    rpi = assign(names[:5], {"rpi4": 1.0}, PROFILES, seed=0)
    assert {d.samples_per_s for d in rpi.values()} == {150.0}  # spread 0: exactly the profile


def test_assign_by_table_and_errors() -> None:
    table = {n: ("phone" if i % 2 else "rpi4") for i, n in enumerate(NAMES)}
    ds = assign(NAMES, table, PROFILES, seed=0)
    assert ds["client_001"].profile == "phone" and ds["client_000"].profile == "rpi4"
    with pytest.raises(ValueError, match="did you mean 'phone'"):
        assign(NAMES, {"phon": 0.7, "rpi4": 0.3}, PROFILES, seed=0)
    with pytest.raises(ValueError, match="lacks 1 client"):
        assign(NAMES, {n: "phone" for n in NAMES[1:]}, PROFILES, seed=0)
    with pytest.raises(ValueError, match="did you mean 'rpi4'"):
        assign(NAMES, {n: "rpi5" for n in NAMES}, PROFILES, seed=0)


def test_trace_overrides_profile_availability() -> None:
    w = windows([(0, 100)])
    ds = assign(NAMES, {"phone": 1.0}, PROFILES, seed=0, availability={"client_003": w})
    assert ds["client_003"].availability is w and ds["client_004"].availability is ALWAYS
    with pytest.raises(ValueError, match="client in the availability trace"):
        assign(NAMES, {"phone": 1.0}, PROFILES, seed=0, availability={"client_x": w})


def test_bad_profiles_are_named() -> None:
    with pytest.raises(ValueError, match="'phone': up_mbps must be > 0"):
        DeviceProfile("phone", samples_per_s=1, up_mbps=-5, down_mbps=1)
    with pytest.raises(ValueError, match="dropout must be in"):
        DeviceProfile("x", samples_per_s=1, up_mbps=1, down_mbps=1, dropout=1.0)


def test_fate_offline_left_dropout_ok() -> None:
    w = windows([(10, 20)])
    d = dev(availability=w)
    assert fate(d, 0, 1, 5.0, 1.0).reason == "offline"
    assert fate(d, 0, 1, 12.0, 3.0) .reason == "ok" and fate(d, 0, 1, 12.0, 3.0).at_s == 15.0
    left = fate(d, 0, 1, 12.0, 30.0)
    assert (left.reason, left.at_s, left.ok) == ("left", 20.0, False)


def test_dropout_rate_matches_its_probability_and_is_keyed_by_round_and_client() -> None:
    d = dev(dropout=0.2)
    drops = [not fate(d, 7, r, 0.0, 1.0).ok for r in range(2000)]
    assert np.mean(drops) == pytest.approx(0.2, abs=0.03)
    assert drops == [not fate(d, 7, r, 0.0, 1.0).ok for r in range(2000)]
    assert drops != [not fate(dev(dropout=0.2, client="other"), 7, r, 0.0, 1.0).ok for r in range(2000)]


def test_summary_reports_population_and_round_time() -> None:
    ds = assign(NAMES, {"phone": 0.5, "rpi4": 0.5}, PROFILES, seed=0)
    s = summarize(ds, samples=300, bytes_down=1_000_000, bytes_up=1_000_000)
    assert s["clients"] == 10 and s["profiles"] in ("phone=5, rpi4=5", "rpi4=5, phone=5")
    slowest = max(task_time(d, 300, 1_000_000, 1_000_000).total_s for d in ds.values())
    assert s["round s max"] == pytest.approx(slowest)
    assert s["online fraction"] == 1.0 and s["latency ms p50"] == pytest.approx(35.0)
    half = {k: DeviceProfile(**{**p.__dict__, "availability": MarkovSpec(100, 100)})
            for k, p in PROFILES.items()}
    s2 = summarize(assign(NAMES, {"phone": 1.0}, half, seed=0), 300, 1, 1, horizon_s=1e6)
    assert 0.35 < s2["online fraction"] < 0.65
