"""What a task costs on the simulated clock, and how much local work fits before a deadline.

:class:`DeviceCost` is the ``cost(task, reply, sent_s)`` hook of the Links that keep a
simulated clock (:class:`fedkit.sim.link.InProcessLink`, :class:`fedkit.sim.clocked.ClockedLink`):
the seconds from sending ``task`` until ``reply`` is back at the server, from the client's
device (:mod:`fedkit.sim.devices`, FedScale's completion time as one pure function)::

    seconds = latency + task.params.nbytes x 8 / down_bps          (the model, as encoded)
            + samples x cost_per_sample / samples_per_s            (local work)
            + latency + reply.update.nbytes x 8 / up_bps           (the update, as encoded)

Cost model: ``samples_per_s`` is forward-pass throughput; a training sample costs
``TRAIN_COST = 3`` forward passes (forward + backward ~ 2 x forward, FedScale's
``augmentation_factor``), an evaluation sample costs 1. ``samples`` is what the task really
processes: whole epochs are ``epochs x n`` for a client with ``n`` training samples, a fixed
``steps`` count is those ``steps`` batches of :func:`fedkit.models.train.batches` (the last
batch of an epoch may be short). The bytes are the codecs' real output (``Encoded.nbytes``).

Availability and dropout (:func:`fedkit.sim.devices.fate`, keyed by (seed, round, client)):
a client offline when the task is sent, one that goes offline before it would finish, or one
the profile's ``dropout`` draw hits, never answers: the cost is ``inf`` and the task settles
only by the engine's deadline, like a silent device over gRPC.

:class:`PartialWork` is FedProx's partial work for stragglers (Li et al., MLSys 2020): before a
task is sent, it caps the client's local steps at what its device fits in the deadline
(:func:`fedkit.sim.devices.steps_within`), so the reply arrives in time with that work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedkit.models.train import TrainConfig
from fedkit.sim.devices import TRAIN_COST, Device, fate, steps_within, task_time
from fedkit.types import ClientId, Reply, Task

EVAL_COST = 1.0
"""Forward passes per evaluation sample."""


def local_steps(n: int, cfg: TrainConfig) -> int:
    """Local steps ``cfg`` asks of a client with ``n`` samples (as ``fedkit.models.train.batches``)."""
    if n <= 0:
        return 0
    if cfg.steps is not None:
        return cfg.steps
    return cfg.epochs * math.ceil(n / max(1, min(cfg.batch_size, n)))


def local_samples(n: int, cfg: TrainConfig) -> int:
    """Samples ``cfg`` makes a client with ``n`` samples process (epochs x n, or the first
    ``steps`` batches of its shuffled epochs)."""
    if n <= 0:
        return 0
    if cfg.steps is None:
        return cfg.epochs * n
    bs = max(1, min(cfg.batch_size, n))
    per_epoch = math.ceil(n / bs)
    full, rest = divmod(cfg.steps, per_epoch)
    return full * n + rest * bs


def _task_samples(task: Task, reply: Reply | None, sizes: Mapping[ClientId, int]) -> tuple[float, float]:
    """(samples, forward passes per sample) of a task."""
    if task.kind == "train":
        return float(local_samples(sizes[task.client], task.config.train)), TRAIN_COST
    if task.kind == "evaluate":
        return float(reply.num_examples if reply is not None else 0), EVAL_COST
    return 0.0, TRAIN_COST  # kinds with no local model work of their own (their messages still cost)


@dataclass(frozen=True)
class DeviceCost:
    """The simulated seconds of every task, from each client's device; pure in its arguments.

    ``sizes``: each client's number of training samples (what the scenario's partition gave it).
    """

    devices: Mapping[ClientId, Device]
    sizes: Mapping[ClientId, int]
    seed: int

    def __post_init__(self) -> None:
        missing = sorted(set(self.sizes) - set(self.devices))
        if missing:
            raise ValueError(f"no device for client(s): {', '.join(missing[:5])}")

    def seconds(self, task: Task, reply: Reply | None) -> float:
        """Completion time of ``task`` on its client's device, ignoring availability."""
        samples, per = _task_samples(task, reply, self.sizes)
        up = reply.update.nbytes if reply is not None and reply.update is not None else 0
        return task_time(self.devices[task.client], samples, task.params.nbytes, up, per).total_s

    def __call__(self, task: Task, reply: Reply, sent_s: float) -> float:
        """Seconds until ``reply`` is back, or ``inf`` when the client never answers."""
        duration = self.seconds(task, reply)
        f = fate(self.devices[task.client], self.seed, task.round, sent_s, duration)
        return duration if f.ok else math.inf

    def online(self, client: ClientId, t: float) -> bool:
        """Whether ``client`` is online (can be sampled) at simulated time ``t``."""
        return self.devices[client].availability.online(t)


@dataclass(frozen=True)
class PartialWork:
    """Caps each client's local steps at what fits in ``budget_s`` (the round's deadline).

    ``bytes_up`` is the uplink size assumed when the task is made, before the update exists:
    the uncompressed float32 frame of the model, an upper bound for every codec that does not
    expand its input. A client that fits all its work, or not even one step, gets the task
    unchanged (the latter then misses the deadline), and so does a client with no device here
    (a deployed device named otherwise than the scenario's clients).
    """

    devices: Mapping[ClientId, Device]
    sizes: Mapping[ClientId, int]
    budget_s: float
    bytes_up: int

    def cap(self, rnd: int, client: ClientId, train: TrainConfig, bytes_down: int) -> TrainConfig:
        if client not in self.sizes or client not in self.devices:
            return train
        n = self.sizes[client]
        full = local_steps(n, train)
        if full == 0:
            return train
        d = self.devices[client]
        bs = max(1, min(train.batch_size, n))
        k = steps_within(d, self.budget_s, bs, full, bytes_down, self.bytes_up)
        if k >= full or k == 0:
            return train
        capped = train.model_copy(update={"steps": k})
        # the charged time counts the samples really processed: never past the budget
        while k > 1 and task_time(d, local_samples(n, capped), bytes_down, self.bytes_up).total_s > self.budget_s:
            k -= 1
            capped = train.model_copy(update={"steps": k})
        return capped

    def fraction(self, client: ClientId, asked: TrainConfig, full: TrainConfig) -> float:
        """Share of the full local work (in samples) that ``asked`` is."""
        n = self.sizes.get(client, 0)
        whole = local_samples(n, full)
        return local_samples(n, asked) / whole if whole else 1.0
