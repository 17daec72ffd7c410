import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fedkit.scenario.devices import Devices, build_devices, to_profiles
from fedkit.sim.availability import ALWAYS, Markov
from fedkit.sim.devices import task_time

SECTION = yaml.safe_load("""
profiles:
  phone: {compute: {samples_per_s: 400, spread: 0.5}, up_mbps: 5, down_mbps: 20, latency_ms: 60,
          availability: {kind: markov, mean_on_s: 600, mean_off_s: 1800}, dropout: 0.05}
  rpi4:  {compute: {samples_per_s: 150}, up_mbps: 20, down_mbps: 50, latency_ms: 10}
assign: {phone: 0.7, rpi4: 0.3}
""")
NAMES = [f"client_{i:03d}" for i in range(10)]


def errors(raw: dict[str, Any], **ctx: Any) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as e:
        Devices.model_validate(raw, context=ctx or None)
    return [(".".join(map(str, x["loc"])), x["msg"]) for x in e.value.errors()]


def test_the_issue_example_validates_and_builds() -> None:
    sec = Devices.model_validate(SECTION)
    p = to_profiles(sec)
    assert p["phone"].samples_per_s == 400 and p["phone"].spread == 0.5 and p["rpi4"].latency_ms == 10
    ds = build_devices(sec, NAMES, seed=1)
    assert sum(d.profile == "phone" for d in ds.values()) == 7
    phone = next(d for d in ds.values() if d.profile == "phone")
    rpi = next(d for d in ds.values() if d.profile == "rpi4")
    assert isinstance(phone.availability, Markov) and rpi.availability is ALWAYS
    assert rpi.samples_per_s == 150 and phone.dropout == 0.05
    assert build_devices(sec, NAMES, seed=1) == ds
    # rpi4: 1000 samples x 3 / 150 = 20 s; 1 MB down at 50 Mbit/s + 10 ms; 1 MB up at 20 Mbit/s + 10 ms
    assert task_time(rpi, 1000, 10**6, 10**6).total_s == pytest.approx(20 + 0.17 + 0.41)


def test_unknown_keys_are_errors() -> None:
    raw = yaml.safe_load(yaml.safe_dump(SECTION))
    raw["profiles"]["rpi4"]["uplink"] = 3
    assert ("profiles.rpi4.uplink", "Extra inputs are not permitted") in errors(raw)


def test_unknown_profile_in_assign_suggests_the_right_one() -> None:
    raw = {**SECTION, "assign": {"phnoe": 0.7, "rpi4": 0.3}}
    [(_, msg)] = errors(raw)
    assert "unknown profile 'phnoe' (did you mean 'phone'?)" in msg


def test_fractions_must_sum_to_one() -> None:
    [(_, msg)] = errors({**SECTION, "assign": {"phone": 0.7, "rpi4": 0.2}})
    assert "sum to 1, got sum 0.9" in msg


def test_negative_bandwidth_is_named() -> None:
    raw = yaml.safe_load(yaml.safe_dump(SECTION))
    raw["profiles"]["phone"]["up_mbps"] = -5
    assert ("profiles.phone.up_mbps", "Input should be greater than 0") in errors(raw)


def test_markov_needs_its_means_and_dropout_is_a_probability() -> None:
    raw = yaml.safe_load(yaml.safe_dump(SECTION))
    raw["profiles"]["phone"]["availability"] = {"kind": "markov", "mean_on_s": 600}
    raw["profiles"]["phone"]["dropout"] = 1.5
    errs = dict(errors(raw))
    assert "profiles.phone.availability.markov.mean_off_s" in errs
    assert errs["profiles.phone.dropout"] == "Input should be less than 1"


def test_several_profiles_need_an_assignment_one_does_not() -> None:
    raw = {"profiles": SECTION["profiles"]}
    [(_, msg)] = errors(raw)
    assert "assign: needed with 2 profiles" in msg
    one = Devices.model_validate({"profiles": {"rpi4": SECTION["profiles"]["rpi4"]}})
    assert {d.profile for d in build_devices(one, NAMES, 0).values()} == {"rpi4"}


def test_malformed_trace_rows_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "av.csv").write_text("client,start,end\nclient_000,0,60\nclient_001,90,x\n")
    [(_, msg)] = errors({**SECTION, "trace": "av.csv"}, base_dir=str(tmp_path))
    assert f"{tmp_path / 'av.csv'}:3: start and end must be numbers" in msg


def test_trace_overrides_availability_and_unknown_clients_are_errors(tmp_path: Path) -> None:
    (tmp_path / "av.csv").write_text("client,start,end\nclient_000,0,60\n")
    sec = Devices.model_validate({**SECTION, "trace": "av.csv"}, context={"base_dir": tmp_path})
    ds = build_devices(sec, NAMES, seed=0, base_dir=tmp_path)
    assert ds["client_000"].availability.online(30) and not ds["client_000"].availability.online(61)
    with pytest.raises(ValueError, match="client in the availability trace"):
        build_devices(sec, ["a", "b"], seed=0, base_dir=tmp_path)


def test_assign_from_a_profile_table(tmp_path: Path) -> None:
    rows = "".join(f"{n},{'rpi4' if i < 2 else 'phone'}\n" for i, n in enumerate(NAMES))
    (tmp_path / "devices.csv").write_text("client,profile\n" + rows)
    sec = Devices.model_validate({**SECTION, "assign": {"file": "devices.csv"}},
                                 context={"base_dir": tmp_path})
    ds = build_devices(sec, NAMES, seed=0, base_dir=tmp_path)
    assert [d.profile for d in ds.values()][:3] == ["rpi4", "rpi4", "phone"]
    (tmp_path / "devices.csv").write_text("client,profile\nclient_000,iphone\n")
    [(_, msg)] = errors({**SECTION, "assign": {"file": "devices.csv"}}, base_dir=str(tmp_path))
    assert "devices.csv:2: unknown profile 'iphone'" in msg


def test_fedscale_section(tmp_path: Path) -> None:
    cap = {5: {"computation": 100.0, "communication": 8000.0}}
    beh = {5: {"active": [0], "inactive": [50], "finish_time": 100, "duration": 1, "model": "m"}}
    (tmp_path / "cap.pkl").write_bytes(pickle.dumps(cap))
    (tmp_path / "beh.pkl").write_bytes(pickle.dumps(beh))
    raw = {"fedscale": {"capacity": "cap.pkl", "behaviour": "beh.pkl"}}
    sec = Devices.model_validate(raw, context={"base_dir": tmp_path})
    ds = build_devices(sec, NAMES[:2], seed=0, base_dir=tmp_path)
    d = ds["client_001"]
    assert d.samples_per_s == pytest.approx(10.0) and d.up_mbps == pytest.approx(8.0)
    assert d.availability.online(120) and not d.availability.online(170)
    [(_, msg)] = errors({**raw, "profiles": SECTION["profiles"]}, base_dir=str(tmp_path))
    assert "not both" in msg


def _scenario(tmp_path: Path, **over: Any) -> Path:
    from tests.conftest import tiny_raw

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(tiny_raw(**over)))
    return f


def test_a_scenario_file_reads_its_trace_next_to_it_and_names_bad_rows(tmp_path: Path) -> None:
    from fedkit.scenario import ScenarioError, dump, load, validate

    (tmp_path / "av.csv").write_text("client,start,end\nclient-0,0,60\nclient-1,90\n")
    path = _scenario(tmp_path, devices={**SECTION, "trace": "av.csv"})
    with pytest.raises(ScenarioError) as e:
        load(path)
    assert f"devices: {tmp_path / 'av.csv'}:3: expected 3 fields" in str(e.value)
    (tmp_path / "av.csv").write_text("client,start,end\nclient-0,0,60\n")
    s = load(path)
    assert s.devices is not None and s.devices.trace == str(tmp_path / "av.csv")
    assert validate(yaml.safe_load(dump(s))) == s  # absolute: the same files from anywhere


def test_scenario_level_device_settings_are_checked(tmp_path: Path) -> None:
    from fedkit.scenario import ScenarioError, load

    cases = {
        "needs a devices: section": {"server": {"stragglers": "partial"}},
        "needs a server.deadline_s": {"server": {"stragglers": "partial", "deadline_s": None},
                                      "devices": SECTION},
        "server.over_select: Input should be greater than or equal to 1": {"server": {"over_select": 0.5}},
        "server.stragglers: Input should be 'drop' or 'partial'": {"server": {"stragglers": "wait"}},
        "evaluation.target_acc: Input should be less than or equal to 1": {"evaluation": {"target_acc": 60}},
        "devices: assign: unknown profile 'phnoe'": {"devices": {**SECTION, "assign": {"phnoe": 1.0}}},
    }
    for msg, over in cases.items():
        with pytest.raises(ScenarioError, match=msg):
            load(_scenario(tmp_path, **over))


def test_validate_checks_the_trace_names_the_clients(tmp_path: Path) -> None:
    from fedkit.scenario import load
    from fedkit.scenario.check import check_data

    (tmp_path / "av.csv").write_text("client,start,end\nclient-0,0,60\nphone-7,0,60\n")
    [problem] = check_data(load(_scenario(tmp_path, devices={**SECTION, "trace": "av.csv"})))
    assert problem.startswith("devices: unknown client in the availability trace: 'phone-7'")
