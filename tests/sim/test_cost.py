"""The cost of a task on its device: seconds by hand, availability and dropout, partial work."""

from __future__ import annotations

import math

import pytest

from fedkit.models.train import TrainConfig, batches
from fedkit.rng import rng
from fedkit.runtime.task import ModelRef, TrainTask
from fedkit.sim.availability import windows
from fedkit.sim.cost import DeviceCost, PartialWork, local_samples, local_steps
from fedkit.sim.devices import Device
from fedkit.types import Encoded, Reply, Task

ALWAYS_ON = windows([(0.0, 1e9)])


def dev(name: str = "c", speed: float = 100.0, availability=ALWAYS_ON, dropout: float = 0.0) -> Device:
    return Device(name, "p", speed, up_mbps=8.0, down_mbps=16.0, latency_ms=50.0,
                  availability=availability, dropout=dropout)


def payload(nbytes: int) -> Encoded:
    e = Encoded("identity", b"")
    return Encoded("identity", b"\0" * (nbytes - e.nbytes))


def task_of(cfg: TrainConfig, client: str = "c", down: int = 2_000_000, rnd: int = 1) -> Task:
    config = TrainTask(seed=0, model=ModelRef(spec={"name": "logreg"}, input_shape=(4,), num_classes=2),
                       train=cfg)
    return Task(rnd, client, "train", payload(down), config, task_id="t")


def test_samples_are_what_the_training_loop_really_draws() -> None:
    for n, cfg in [(95, TrainConfig(epochs=3, batch_size=10)), (95, TrainConfig(steps=13, batch_size=10)),
                   (7, TrainConfig(steps=5, batch_size=10)), (40, TrainConfig(steps=4, batch_size=10))]:
        drawn = batches(n, cfg, rng(0, "x"))
        assert local_samples(n, cfg) == sum(len(b) for b in drawn)
        assert local_steps(n, cfg) == len(drawn)


def test_seconds_by_hand() -> None:
    # 2 epochs x 100 samples x 3 / 100 per s = 6 s; 2 MB down at 16 Mbit/s = 1 s (+ 50 ms);
    # 1 MB up at 8 Mbit/s = 1 s (+ 50 ms): 8.1 s
    cost = DeviceCost({"c": dev()}, {"c": 100}, seed=0)
    task = task_of(TrainConfig(epochs=2, batch_size=10))
    reply = Reply("t", "c", 1, 100, update=payload(1_000_000))
    assert cost(task, reply, 0.0) == pytest.approx(8.1)
    # evaluation: one forward pass per test sample, and no update comes back
    ev = Task(1, "c", "evaluate", payload(2_000_000), {}, task_id="e")
    assert cost(ev, Reply("e", "c", 1, 300), 0.0) == pytest.approx(1.05 + 3.0 + 0.05)


def test_offline_leaving_and_dropout_never_arrive() -> None:
    task = task_of(TrainConfig(epochs=2, batch_size=10))
    reply = Reply("t", "c", 1, 100, update=payload(1_000_000))
    online_until_5 = windows([(0.0, 5.0), (10.0, 100.0)])
    cost = DeviceCost({"c": dev(availability=online_until_5)}, {"c": 100}, seed=0)
    assert cost(task, reply, 0.0) == math.inf  # leaves at 5 s, 8.1 s in
    assert cost(task, reply, 6.0) == math.inf  # offline when sent
    assert cost(task, reply, 10.0) == pytest.approx(8.1)
    assert cost.online("c", 4.0) and not cost.online("c", 7.0)
    flaky = DeviceCost({"c": dev(dropout=0.5)}, {"c": 100}, seed=0)
    lost = [flaky(task_of(task.config.train, rnd=r), reply, 0.0) == math.inf for r in range(200)]
    assert 70 < sum(lost) < 130  # keyed by (seed, round, client): the same every time
    assert lost == [flaky(task_of(task.config.train, rnd=r), reply, 0.0) == math.inf for r in range(200)]


def test_partial_work_caps_steps_to_the_deadline() -> None:
    # one step of 10 samples = 0.3 s; wire both ways 2.1 s; 5 s budget -> 9 steps (4.8 s)
    work = PartialWork({"c": dev()}, {"c": 100}, budget_s=5.0, bytes_up=1_000_000)
    full = TrainConfig(epochs=2, batch_size=10)  # 20 steps
    capped = work.cap(1, "c", full, bytes_down=2_000_000)
    assert capped.steps == 9 and capped.lr == full.lr
    assert work.fraction("c", capped, full) == pytest.approx(90 / 200)
    cost = DeviceCost({"c": dev()}, {"c": 100}, seed=0)
    t = cost(task_of(capped), Reply("t", "c", 1, 100, update=payload(1_000_000)), 0.0)
    assert t <= 5.0 and t == pytest.approx(4.8)
    roomy = PartialWork({"c": dev()}, {"c": 100}, budget_s=100.0, bytes_up=1_000_000)
    assert roomy.cap(1, "c", full, 2_000_000) is full  # everything fits: unchanged
    hopeless = PartialWork({"c": dev()}, {"c": 100}, budget_s=2.0, bytes_up=1_000_000)
    assert hopeless.cap(1, "c", full, 2_000_000) is full  # not one step fits: it will be late
    assert work.cap(1, "dev-9", full, 2_000_000) is full  # a device the scenario does not name


def test_a_client_without_a_device_is_an_error() -> None:
    with pytest.raises(ValueError, match="no device for client"):
        DeviceCost({"a": dev("a")}, {"a": 1, "b": 2}, seed=0)
