"""The server's split endpoint: refuses bad frames (naming the problem) before touching state,
serves one client at a time in sequential schemes, undoes a lost client's batches, and gives
splitfed_v1 the same result whatever order parallel clients' frames arrive in."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fedkit.models import TrainConfig, init_model
from fedkit.rng import rng
from fedkit.split.channel import ClientHalf, StreamChannel
from fedkit.split.client import ClientConfig, train_split
from fedkit.split.endpoint import Endpoint
from fedkit.split.local import LocalConnect
from fedkit.split.schemes import initial, make_setup
from fedkit.split.server import server_init
from fedkit.split.wire import SplitFrame, SplitRefused
from fedkit.types import Encoded, Task

from .test_schemes import digits

TR = TrainConfig(steps=4, batch_size=16, lr=0.1)
SHAPE = (64,)


def _endpoint(scheme: str, cuts: str | list[str] = "2", **kw):  # type: ignore[no-untyped-def]
    model = init_model({"name": "mlp", "hidden": [16, 16]}, SHAPE, 10, seed=1)
    setup = make_setup(scheme, model, cuts, SHAPE, 10)
    cp, sp = initial(setup)
    ep = Endpoint(setup, TR, seed=0, batch_size=16, **kw)
    ep.begin_round(server_init(ep.cfg, sp), 1)
    return setup, cp, ep


def _data(c: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits()[0][c]
    return x.reshape(len(x), -1), y


def _train(setup, cp, ep, client: str, task_id: str | None = None):  # type: ignore[no-untyped-def]
    task_id = task_id or f"t.{client}"
    stream = LocalConnect(ep)(Task(1, client, "split_train", Encoded("identity", b""), task_id=task_id))
    ch = StreamChannel(stream, ClientHalf("identity", client, round=1), expect_reply=setup.scheme.gradients_down,
                       body_shape=setup.body_shape)
    x, y = _data(client)
    out = train_split(ClientConfig(setup.scheme.name, setup.client_modules, TR), cp, x, y, ch, rng(0, "train", 1, client),
                      round=1, client=client)
    stream.close()
    return out


def _frame(step: int, a: np.ndarray, y: np.ndarray | None, kind: str = "activations") -> SplitFrame:
    from fedkit.compression import make

    enc = make("identity").encode(None, [a])[1]
    lab = None if y is None else make("identity").encode(None, [y])[1]
    return SplitFrame(step, kind, enc, lab)  # type: ignore[arg-type]


def test_frames_for_tasks_not_sent_or_not_yours_are_refused() -> None:
    _, _, ep = _endpoint("splitfed_v1")
    with pytest.raises(SplitRefused, match="no open split task") as e:
        ep.open("c0", "t.c0")
    assert e.value.code == "failed_precondition"
    ep.expect("c0", "t.c0")
    with pytest.raises(SplitRefused, match="was not sent to 'c1'"):
        ep.open("c1", "t.c0")
    a, y = np.ones((4, 16), np.float32), np.arange(4)
    with pytest.raises(SplitRefused, match="is not open"):
        ep.exchange("c0", "t.c0", _frame(0, a, y))
    ep.open("c0", "t.c0")
    with pytest.raises(SplitRefused, match="already has its stream"):
        ep.open("c0", "t.c0")
    ep.finish("t.c0", keep=True)
    with pytest.raises(SplitRefused, match="no open split task"):  # a late frame after settling
        ep.exchange("c0", "t.c0", _frame(0, a, y))


def test_bad_frames_are_refused_and_the_state_is_untouched() -> None:
    _, _, ep = _endpoint("splitfed_v1")
    ep.expect("c0", "t")
    ep.open("c0", "t")
    good, y = np.ones((4, 16), np.float32), np.arange(4)
    before = ep._state
    cases = [
        (_frame(1, good, y), "step out of order: expected activations of step 0"),
        (_frame(0, np.ones((4, 15), np.float32), y), r"the cut gives \(16,\)"),
        (_frame(0, np.full_like(good, np.inf), y), "NaN or Inf"),
        (_frame(0, good, None), "needs labels"),
        (_frame(0, np.ones((17, 16), np.float32), np.arange(17)), "over the limit"),  # > batch_size
        (_frame(0, good, y, kind="gradients"), "does not accept 'gradients'"),
    ]
    for frame, match in cases:
        with pytest.raises(SplitRefused, match=match) as e:
            ep.exchange("c0", "t", frame)
        assert e.value.code == "invalid_argument"
        assert ep._state is before
    reply = ep.exchange("c0", "t", _frame(0, good, y))
    assert reply is not None and reply.kind == "gradients" and reply.step == 0
    assert ep.max_frame_bytes() > 16 * 16 * 4


def test_an_oversized_frame_is_refused_before_the_endpoint_sees_it() -> None:
    _, _, ep = _endpoint("splitfed_v1")
    ep.expect("c0", "t")
    stream = LocalConnect(ep)(Task(1, "c0", "split_train", Encoded("identity", b""), task_id="t"))
    huge = _frame(0, np.ones((16, 16 * 100), np.float32), np.arange(16))
    with pytest.raises(SplitRefused, match="over the limit") as e:
        stream.send(huge)
    assert e.value.code == "resource_exhausted"


@pytest.mark.parametrize("scheme,cuts", [("splitfed_v2", "2"), ("ushape", ["2", "4"]), ("local_loss", "2")])
def test_sequential_schemes_serve_one_stream_and_undo_a_client_that_gives_up(scheme: str, cuts) -> None:  # type: ignore[no-untyped-def]
    setup, cp, ep = _endpoint(scheme, cuts)
    ep.expect("c0", "t.c0")
    _train(setup, cp, ep, "c0")
    ep.finish("t.c0", keep=True)
    held = ep._state
    ep.expect("c1", "t.c1")
    ep.expect("c2", "t.c2")
    stream = LocalConnect(ep)(Task(1, "c1", "split_train", Encoded("identity", b""), task_id="t.c1"))
    with pytest.raises(SplitRefused, match="one client at a time"):
        LocalConnect(ep)(Task(1, "c2", "split_train", Encoded("identity", b""), task_id="t.c2"))
    ch = StreamChannel(stream, ClientHalf("identity", "c1", round=1), expect_reply=setup.scheme.gradients_down,
                       body_shape=setup.body_shape)
    x, y = _data("c1")
    train_split(ClientConfig(scheme, setup.client_modules, TR), cp, x, y, ch, rng(0, "x"), round=1, client="c1")
    assert ep._state is not held  # c1's batches stepped the server part ...
    stream.close("client gave up")
    assert ep._state is held  # ... and are undone when it gives up
    ep.finish("t.c1", keep=False)
    state, metrics = ep.end_round()
    assert all(np.array_equal(a, b) for a, b in zip(state.shared.params, held.shared.params, strict=True))
    assert metrics["server_samples"] == 64  # c0's 4 batches of 16; none of c1's
    assert metrics["bytes_activations_up"] > 0  # c1's frames crossed the link all the same


def test_splitfed_v1_drops_a_lost_copy_and_ignores_arrival_order() -> None:
    setup, cp, ep = _endpoint("splitfed_v1")
    for c in ("c0", "c1", "c2", "c3"):
        ep.expect(c, f"t.{c}")
    threads = [threading.Thread(target=_train, args=(setup, cp, ep, c)) for c in ("c0", "c1", "c2", "c3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in ("c0", "c1", "c2"):
        ep.finish(f"t.{c}", keep=True)
    ep.finish("t.c3", keep=False)  # its reply was refused: its copy goes
    par, m_par = ep.end_round()

    _, _, ep2 = _endpoint("splitfed_v1")
    for c in ("c2", "c0", "c1"):  # one after another, in another order, without c3
        ep2.expect(c, f"t.{c}")
        _train(setup, cp, ep2, c)
        ep2.finish(f"t.{c}", keep=True)
    seq, m_seq = ep2.end_round()
    assert all(np.array_equal(a, b) for a, b in zip(par.shared.params, seq.shared.params, strict=True))
    assert m_par["server_samples"] == m_seq["server_samples"] == 3 * 64
    assert m_par["server_loss"] == pytest.approx(m_seq["server_loss"])
    assert m_par["bytes_activations_up"] == 4 / 3 * m_seq["bytes_activations_up"]  # c3's bytes still count
