import pickle
from pathlib import Path

import pytest

from fedkit.sim.devices import task_time
from fedkit.sim.traces import (
    TraceError,
    fedscale_devices,
    load_fedscale_behaviour,
    load_fedscale_capacity,
    load_profiles_csv,
    load_windows_csv,
    trace_keys_for,
)


def test_windows_csv_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "av.csv"
    f.write_text("# recorded on the lab bench\nclient,start,end\nc0,0,600\nc0,1800,2400.5\n\nc1,120,86400\n")
    w = load_windows_csv(f)
    assert set(w) == {"c0", "c1"}
    assert w["c0"].starts == (0.0, 1800.0) and w["c0"].ends == (600.0, 2400.5)
    assert w["c1"].online(200) and not w["c1"].online(100)


def test_malformed_rows_are_all_reported_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("client,start,end\nc0,0,600\nc0,ten,20\nc1,50,40\nc2,1\n")
    with pytest.raises(TraceError) as e:
        load_windows_csv(f)
    assert e.value.problems[0].startswith(f"{f}:3: start and end must be numbers")
    assert f"{f}:4: need 0 <= start < end, got start=50 end=40" in e.value.problems
    assert e.value.problems[2].startswith(f"{f}:5: expected 3 fields")


def test_header_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "nohead.csv"
    f.write_text("c0,0,600\n")
    with pytest.raises(TraceError, match=r"nohead.csv:1: expected the header client,start,end"):
        load_windows_csv(f)
    with pytest.raises(TraceError, match="file not found"):
        load_windows_csv(tmp_path / "nope.csv")


def test_profiles_csv(tmp_path: Path) -> None:
    f = tmp_path / "devices.csv"
    f.write_text("client,profile\nc0,phone\nc1,rpi4\nc1,phone\nc2,rpi5\n")
    with pytest.raises(TraceError) as e:
        load_profiles_csv(f, known=["phone", "rpi4"])
    assert e.value.problems == [
        f"{f}:4: client 'c1' listed twice",
        f"{f}:5: unknown profile 'rpi5'; known: phone, rpi4",
    ]
    f.write_text("client,profile\nc0,phone\nc1,rpi4\n")
    assert load_profiles_csv(f) == {"c0": "phone", "c1": "rpi4"}


def _fedscale(tmp_path: Path) -> tuple[Path, Path]:
    cap = {1: {"computation": 162.0, "communication": 5648.1}, 2: {"computation": 50.0, "communication": 20000.0}}
    beh = {
        1: {"duration": 100, "active": [0, 500], "inactive": [100, 700], "finish_time": 1000, "model": "m"},
        2: {"duration": 100, "active": [200], "inactive": [1000], "finish_time": 1000, "model": "m"},
    }
    (tmp_path / "cap.pkl").write_bytes(pickle.dumps(cap))
    (tmp_path / "beh.pkl").write_bytes(pickle.dumps(beh))
    return tmp_path / "cap.pkl", tmp_path / "beh.pkl"


def test_fedscale_capacity_units(tmp_path: Path) -> None:
    cap = load_fedscale_capacity(_fedscale(tmp_path)[0])
    assert cap[1].samples_per_s == pytest.approx(1000 / 162.0) and cap[1].mbps == pytest.approx(5.6481)


def test_fedscale_behaviour_is_periodic(tmp_path: Path) -> None:
    beh = load_fedscale_behaviour(_fedscale(tmp_path)[1])
    w = beh[1]
    assert w.online(50) and not w.online(300) and w.online(600) and w.online(1050)
    assert w.next_change(150) == 500 and w.next_change(800) == 1000
    assert beh[2].online(999.0) and not beh[2].online(1000.0)


def test_fedscale_bad_entries(tmp_path: Path) -> None:
    f = tmp_path / "cap.pkl"
    f.write_bytes(pickle.dumps({7: {"computation": 0.0, "communication": 1.0}, 8: {"speed": 1}}))
    with pytest.raises(TraceError) as e:
        load_fedscale_capacity(f)
    assert len(e.value.problems) == 2 and "client 7" in e.value.problems[0]
    f.write_bytes(b"not a pickle")
    with pytest.raises(TraceError, match="not a FedScale pickle"):
        load_fedscale_capacity(f)


def test_fedscale_traces_drive_devices(tmp_path: Path) -> None:
    """FedScale's own completion time comes out of task_time for an imported device."""
    cap_f, beh_f = _fedscale(tmp_path)
    cap, beh = load_fedscale_capacity(cap_f), load_fedscale_behaviour(beh_f)
    names = ["a", "b", "c"]
    assert trace_keys_for(names, list(cap)) == {"a": 1, "b": 2, "c": 1}
    ds = fedscale_devices(names, cap, beh, seed=0)
    assert ds["a"].profile == ds["c"].profile == "fedscale:1" and ds["b"].profile == "fedscale:2"
    kbits = 4000.0
    t = task_time(ds["a"], 100, int(kbits * 125), int(kbits * 125))
    assert t.total_s == pytest.approx(3.0 * 100 * 162.0 / 1000 + 2 * kbits / 5648.1)
    assert not ds["b"].availability.online(100) and ds["b"].availability.online(300)
