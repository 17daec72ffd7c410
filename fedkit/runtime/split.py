"""The round engine's split-learning seam: what :mod:`fedkit.runtime.server` calls when a
plan has a ``split`` (fedkit/split/ holds the algorithm; this module only plugs it in).

A split experiment is an FL experiment whose "model" is the client part: the plan's params are
the client part(s), aggregated by the plan's aggregator from ``split_train`` replies (vanilla:
relayed by :class:`~fedkit.runtime.policy.SequentialRound`), while the server part lives in
:attr:`ServerState.split <fedkit.runtime.server.ServerState>` and is trained by the
:class:`~fedkit.split.endpoint.Endpoint` from the clients' split streams. Per round the engine:

1. ``begin(state.split, round)``: the endpoint starts the round from the server part it holds;
2. ``config(train_task)`` for each task it makes, and ``opened(tasks)`` before sending them, so
   a stream opens only for a task the engine sent, to that client;
3. ``settled(task, keep)`` for every task it settles (``keep``: the reply was accepted), and
   ``keep=False`` for those that missed the deadline: only accepted tasks' batches count;
4. ``end()``: the new server part and the round's metrics (server loss and samples, and bytes
   by category: ``bytes_activations_up``, ``bytes_gradients_down``, ``bytes_labels_up``, and
   U-shape's ``bytes_activations_down`` / ``bytes_gradients_up``);
5. evaluates the composed model (``evaluator(state.split)``) and checkpoints the server part
   as the run directory's ``split`` section (``to_arrays`` / ``from_arrays``);
6. after the last round, :meth:`summary` adds ``privacy_*`` to summary.json when the scenario
   asks for ``privacy_eval``: the mean of the rounds' ``leak_auc`` (the endpoint measures it on
   the gradients it sends) and the reconstruction attack on the final parts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkit.runtime.task import SFPromptTask, SplitTrainTask, TrainTask
from fedkit.split.endpoint import Endpoint
from fedkit.split.local import LocalConnect
from fedkit.split.privacy import Defence
from fedkit.split.schemes import SplitSetup
from fedkit.split.server import ServerState, state_from_arrays, state_to_arrays
from fedkit.types import Params, Task

__all__ = ["KIND", "SplitPlan"]

KIND = "split_train"
"""The task kind of a split client's local epochs."""


@dataclass(frozen=True, eq=False)
class SplitPlan:
    """What the engine needs for split learning, built once from a scenario."""

    setup: SplitSetup
    endpoint: Endpoint
    initial: ServerState  # the server part at round 0
    cuts: tuple[str, ...]
    activations: str = "identity"
    gradients: str = "identity"
    bottleneck: int | None = None
    evaluate: Callable[[Params, Params], Mapping[str, float]] | None = None  # (client, server)
    defence: Defence = Defence()  # the clients' NoPeek weight and activation noise
    privacy: Callable[[Params, Params], Mapping[str, float]] | None = None  # reconstruction attack
    sfprompt: SFPromptTask | None = None  # scheme sfprompt: gamma, local epochs

    @property
    def scheme(self) -> str:
        return self.setup.scheme.name

    def config(self, t: TrainTask) -> SplitTrainTask:
        """The split task config for what a training task would carry."""
        return SplitTrainTask(
            seed=t.seed, model=t.model, scheme=self.scheme, cuts=self.cuts, activations=self.activations,  # type: ignore[arg-type]
            gradients=self.gradients, bottleneck=self.bottleneck, nopeek=self.defence.nopeek,
            noise=self.defence.noise, train=t.train, uplink=t.uplink, downlink=t.downlink, sfprompt=self.sfprompt,
        )

    def begin(self, state: ServerState, rnd: int) -> None:
        self.endpoint.begin_round(state, rnd)

    def opened(self, tasks: Sequence[Task]) -> None:
        for t in tasks:
            if t.kind == KIND:
                self.endpoint.expect(t.client, t.task_id)

    def settled(self, task: Task, keep: bool) -> None:
        if task.kind == KIND:
            self.endpoint.finish(task.task_id, keep)

    def end(self) -> tuple[ServerState, dict[str, float]]:
        return self.endpoint.end_round()

    def evaluator(self, state: ServerState | None) -> Callable[[Params], Mapping[str, float]] | None:
        """Central evaluation of the composed model with the server part of ``state``."""
        if self.evaluate is None or state is None:
            return None
        fn, server = self.evaluate, state.shared.params
        return lambda client: fn(client, server)

    def summary(self, rows: Sequence[Mapping[str, Any]], client: Params, server: Params) -> dict[str, float]:
        """The privacy figures of a finished run (empty when the scenario asks for none)."""
        out: dict[str, float] = {}
        aucs = [float(r["leak_auc"]) for r in rows if "leak_auc" in r]
        if aucs:
            out |= {"privacy_leak_auc": float(np.mean(aucs)), "privacy_leak_auc_last": aucs[-1]}
        if self.privacy is not None:
            out |= dict(self.privacy(client, server))
        return out

    def connect(self) -> LocalConnect:
        """The in-process clients' way to this plan's endpoint."""
        return LocalConnect(self.endpoint)

    @staticmethod
    def to_arrays(state: ServerState) -> dict[str, np.ndarray]:
        return state_to_arrays(state)

    @staticmethod
    def from_arrays(arrays: Mapping[str, Any]) -> ServerState:
        return state_from_arrays(arrays)
