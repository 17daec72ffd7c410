"""The five schemes on digits with the reference CNN: they learn, bytes are counted by category,
labels stay home in ushape, no gradient comes down in local_loss, SplitFed V1 is FedAvg."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fedkit.data.datasets import load_digits
from fedkit.models import LocalData, TrainConfig, init_model, set_params, sgd_train
from fedkit.models.params import get_params
from fedkit.rng import rng
from fedkit.split.channel import LocalChannel, SplitBatch
from fedkit.split.optim import tensors
from fedkit.split.schemes import SplitSetup, initial, make_setup, run_round
from fedkit.split.server import LocalServer, ServerConfig, server_handle, server_init

CUTS = {"vanilla": "4", "splitfed_v1": "4", "splitfed_v2": "4", "ushape": ["1", "4"], "local_loss": "4"}
SHAPE = (1, 8, 8)


@cache
def digits(clients: int = 4):  # type: ignore[no-untyped-def]
    ds = load_digits(0, flat=False)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    parts = np.array_split(rng(0, "test-split").permutation(len(y)), clients)
    data = {f"c{i}": (x[p], y[p]) for i, p in enumerate(parts)}
    return data, torch.from_numpy(ds.x_test), ds.y_test


def _parts(setup: SplitSetup, cp: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
    out, i = [], 0
    for m in setup.client_modules:
        n = len(m.state_dict())
        out.append(tensors(m, cp[i : i + n], grad=False))
        i += n
    return out


@torch.no_grad()
def accuracy(setup: SplitSetup, cp: list[np.ndarray], sp: list[np.ndarray], x: torch.Tensor, y: np.ndarray) -> float:
    parts = _parts(setup, cp)
    h = functional_call(setup.client_modules[0], parts[0], (x,))
    out = functional_call(setup.server_module, tensors(setup.server_module, sp, grad=False), (h,))
    if setup.scheme.name == "ushape":
        out = functional_call(setup.client_modules[1], parts[1], (out,))
    return float((out.argmax(1).numpy() == y).mean())


def run(scheme: str, rounds: int, tr: TrainConfig, up: str = "identity", setup: SplitSetup | None = None, seed: int = 0):  # type: ignore[no-untyped-def]
    data, _, _ = digits()
    setup = setup or make_setup(scheme, init_model({"name": "cnn"}, SHAPE, 10, seed=1), CUTS[scheme], SHAPE, 10)
    cp, sp = initial(setup)
    ss = server_init(ServerConfig(scheme, setup.server_module, tr), sp)
    ms = []
    for r in range(rounds):
        cp, ss, m = run_round(setup, cp, ss, data, r, train=tr, server_opt=tr, seed=seed, up=up)
        ms.append(m)
    return setup, cp, ss, ms


TR = TrainConfig(epochs=2, batch_size=32, lr=0.3)


@pytest.mark.parametrize("scheme", list(CUTS))
def test_each_scheme_learns_digits(scheme: str) -> None:
    setup, cp, ss, ms = run(scheme, 2, TR)
    _, xt, yt = digits()
    acc = accuracy(setup, cp, ss.shared.params, xt, yt)
    assert acc > 0.85, (scheme, acc)  # chance is 0.1
    m = ms[-1]
    assert m["bytes_activations_up"] > 0 and m["server_samples"] == 2 * sum(len(v[1]) for v in digits()[0].values())
    if scheme == "ushape":
        assert m["bytes_labels_up"] == 0 and m["bytes_activations_down"] > 0 and m["bytes_gradients_up"] > 0
    else:
        assert m["bytes_labels_up"] > 0 and m["bytes_activations_down"] == 0 and m["bytes_gradients_up"] == 0
    if scheme == "local_loss":
        assert m["bytes_gradients_down"] == 0
    else:
        assert m["bytes_gradients_down"] > 0


def test_activation_bytes_are_the_encoded_frames() -> None:
    """identity: one frame per batch = header + 4 bytes per float; per round that is 2 epochs."""
    _, _, _, ms = run("splitfed_v1", 1, TR)
    data, _, _ = digits()
    per_float = 4 * 32 * 4 * 4  # activation (32, 4, 4) float32 per sample
    batches = sum(2 * -(-len(y) // 32) for _, y in data.values())
    samples = sum(2 * len(y) for _, y in data.values())
    header = ms[0]["bytes_activations_up"] - per_float * samples
    assert 0 < header / batches < 64  # magic + codec name + array header per frame
    assert ms[0]["bytes_gradients_down"] == ms[0]["bytes_activations_up"]


def test_splitfed_v1_is_fedavg_of_the_whole_model() -> None:
    """Identity codecs + SGD: each client trains client part + its own server copy on its batches;
    averaging both halves with the same sample weights is FedAvg of the unsplit model."""
    tr = TrainConfig(epochs=1, batch_size=32, lr=0.1)
    setup, cp, ss, _ = run("splitfed_v1", 2, tr)
    data, xt, yt = digits()
    model = init_model({"name": "cnn"}, SHAPE, 10, seed=1)
    glob = get_params(model)
    for r in range(2):
        news = []
        for c in sorted(data):
            x, y = data[c]
            set_params(model, glob)
            sgd_train(model, LocalData(x, y), tr, rng(0, "train", r, c))
            p = get_params(model)
            news.append((p, len(y)))
        total = sum(n for _, n in news)
        glob = [sum(p[i] * (n / total) for p, n in news) for i in range(len(glob))]
    split_params = [*cp, *ss.shared.params]
    for a, b in zip(split_params, glob, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)
    model.load_state_dict(dict(zip(model.state_dict(), map(torch.from_numpy, glob), strict=True)))
    with torch.no_grad():
        acc_fl = float((model(xt).argmax(1).numpy() == yt).mean())
    assert accuracy(setup, cp, ss.shared.params, xt, yt) == pytest.approx(acc_fl, abs=1 / len(yt))


def test_ushape_labels_never_cross() -> None:
    setup = make_setup("ushape", init_model({"name": "cnn"}, SHAPE, 10, seed=1), ["1", "4"], SHAPE, 10)
    cp, sp = initial(setup)
    cfg = ServerConfig("ushape", setup.server_module, TR)
    box = LocalServer(cfg, server_init(cfg, sp))
    seen: list[SplitBatch] = []

    def spy(client: str, msg: SplitBatch) -> SplitBatch | None:
        seen.append(msg)
        reply = box.handle(client, msg)
        if reply is not None:
            seen.append(reply)
        return reply

    from fedkit.split.client import ClientConfig, train_split

    x, y = digits()[0]["c0"]
    ch = LocalChannel(spy, "c0")
    _, m = train_split(ClientConfig("ushape", setup.client_modules, TR), cp, x[:64], y[:64], ch, rng(0, "t"))
    assert len(seen) == 4 * m["steps"]  # two round trips per step
    assert all(s.labels is None for s in seen)
    assert ch.bytes.labels_up == 0
    # and the server refuses labels outright in this scheme
    bad = SplitBatch(0, "activations", [np.zeros((2, 16, 8, 8), np.float32)], np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="keeps labels on the client"):
        server_handle(cfg, box.state, "c0", bad)


def test_local_loss_sends_upstream_only() -> None:
    _, _, _, ms = run("local_loss", 1, TrainConfig(epochs=1, batch_size=64, lr=0.1))
    assert ms[0]["bytes_gradients_down"] == 0 and ms[0]["bytes_activations_down"] == 0


def test_deterministic_and_global_rng_untouched() -> None:
    tr = TrainConfig(epochs=1, batch_size=64, lr=0.1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run("splitfed_v2", 1, tr)
    b = run("splitfed_v2", 1, tr)
    assert torch.equal(state, torch.get_rng_state())
    for x, y in zip([*a[1], *a[2].shared.params], [*b[1], *b[2].shared.params], strict=True):
        assert np.array_equal(x, y)
    c = run("splitfed_v2", 1, tr, seed=5)  # another seed: another client order and batches
    assert not all(np.array_equal(x, y) for x, y in zip(a[1], c[1], strict=True))


def test_dropout_draws_are_keyed() -> None:
    """A model with dropout on both sides gives the same result twice, from keyed draws."""
    tr = TrainConfig(epochs=1, batch_size=64, lr=0.1)

    def setup() -> SplitSetup:
        model = init_model({"name": "mlp", "hidden": [32, 32], "dropout": 0.5}, (64,), 10, seed=2)
        return make_setup("vanilla", model, "2", (64,), 10)

    data, _, _ = digits()
    flat = {c: (x.reshape(len(x), -1), y) for c, (x, y) in data.items()}
    outs = []
    for _ in range(2):
        s = setup()
        cp, sp = initial(s)
        ss = server_init(ServerConfig("vanilla", s.server_module, tr), sp)
        cp, ss, _ = run_round(s, cp, ss, flat, 0, train=tr, server_opt=tr)
        outs.append([*cp, *ss.shared.params])
    assert all(np.array_equal(x, y) for x, y in zip(*outs, strict=True))


def test_quantized_activations_shrink_bytes_and_still_learn() -> None:
    setup, cp, ss, ms = run("splitfed_v2", 2, TR, up="quant(bits=8)")
    _, _, _, raw = run("splitfed_v2", 1, TR)
    ratio = raw[0]["bytes_activations_up"] / ms[0]["bytes_activations_up"]
    assert 3.5 < ratio <= 4.0
    _, xt, yt = digits()
    assert accuracy(setup, cp, ss.shared.params, xt, yt) > 0.75


def test_server_refuses_bad_frames_and_keeps_its_state() -> None:
    setup = make_setup("splitfed_v1", init_model({"name": "cnn"}, SHAPE, 10, seed=1), "4", SHAPE, 10)
    _, sp = initial(setup)
    cfg = ServerConfig("splitfed_v1", setup.server_module, TR, activation_shape=setup.activation_shape)
    st = server_init(cfg, sp)
    good = np.ones((3, 32, 4, 4), np.float32)
    y = np.array([0, 1, 2])
    cases = [
        (SplitBatch(0, "activations", [np.full_like(good, np.nan)], y), "NaN"),
        (SplitBatch(0, "activations", [np.ones((3, 16, 4, 4), np.float32)], y), r"the cut gives \(32, 4, 4\)"),
        (SplitBatch(0, "activations", [good], None), "needs labels"),
        (SplitBatch(0, "activations", [good], np.array([0, 1, 10])), r"labels must be in 0\.\.9"),
        (SplitBatch(0, "activations", [good.astype(np.int32)], y), "floating point"),
        (SplitBatch(0, "gradients", [good], y), "does not accept gradients"),
    ]
    for msg, match in cases:
        with pytest.raises(ValueError, match=match):
            server_handle(cfg, st, "c0", msg)
    st2, reply = server_handle(cfg, st, "c0", SplitBatch(0, "activations", [good], y))
    assert reply is not None and reply.tensors[0].shape == good.shape
    assert st.copies == {} and "c0" in st2.copies  # the old value is unchanged
    assert all(np.array_equal(a, b) for a, b in zip(st.shared.params, sp, strict=True))
