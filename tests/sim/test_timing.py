import pytest

from fedkit.sim.availability import ALWAYS, windows
from fedkit.sim.devices import Device
from fedkit.sim.timing import Work, round_timing


def dev(name: str, speed: float, availability=ALWAYS, dropout: float = 0.0) -> Device:
    # no wire cost: latency 0, bytes 0; one step of 10 samples costs 30 / speed seconds
    return Device(name, "p", speed, 1.0, 1.0, 0.0, availability, dropout)


DEVICES = {"a": dev("a", 300), "b": dev("b", 150), "c": dev("c", 30), "d": dev("d", 300)}
WORK = {c: Work(steps=10, batch=10, bytes_down=0, bytes_up=0) for c in DEVICES}
# full task: a, d = 1 s; b = 2 s; c = 10 s


def test_no_deadline_waits_for_everyone_ties_by_name() -> None:
    r = round_timing(DEVICES, WORK, seed=0, rnd=1)
    assert [(o.client, o.at_s) for o in r.outcomes] == [("a", 1.0), ("d", 1.0), ("b", 2.0), ("c", 10.0)]
    assert r.end_s == 10.0 and r.kept == ("a", "d", "b", "c")


def test_deadline_drops_stragglers() -> None:
    r = round_timing(DEVICES, WORK, 0, 1, start_s=100.0, deadline_s=5.0)
    assert r.kept == ("a", "d", "b") and r.end_s == 105.0
    assert [(o.client, o.reason) for o in r.outcomes][-1] == ("c", "late")


def test_partial_work_fits_the_steps_before_the_deadline() -> None:
    r = round_timing(DEVICES, WORK, 0, 1, deadline_s=5.0, stragglers="partial")
    c = next(o for o in r.outcomes if o.client == "c")
    assert (c.reason, c.steps, c.at_s) == ("partial", 5, pytest.approx(5.0))  # 1 s per step
    assert r.kept == ("a", "d", "b", "c")


def test_over_selection_keeps_the_first_k() -> None:
    r = round_timing(DEVICES, WORK, 0, 1, deadline_s=50.0, keep=2)
    assert r.kept == ("a", "d") and r.end_s == 1.0
    assert {o.client: o.reason for o in r.outcomes}["b"] == "surplus"


def test_offline_and_leaving_clients_are_lost() -> None:
    devs = dict(DEVICES, b=dev("b", 150, windows([(10, 20)])), c=dev("c", 30, windows([(0, 4)])))
    r = round_timing(devs, WORK, 0, 1)
    reasons = {o.client: (o.reason, o.at_s) for o in r.outcomes}
    assert reasons["b"] == ("offline", 0.0) and reasons["c"] == ("left", 4.0)
    assert r.kept == ("a", "d") and r.end_s == 1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no device for client 'z'"):
        round_timing(DEVICES, {"z": WORK["a"]}, 0, 1)
    with pytest.raises(ValueError, match="stragglers must be"):
        round_timing(DEVICES, WORK, 0, 1, stragglers="wait")  # type: ignore[arg-type]
