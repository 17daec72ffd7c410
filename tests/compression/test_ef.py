import numpy as np
import pytest

from fedkit.compression import decode, make, with_error_feedback


@pytest.mark.parametrize(
    "spec", ["topk(ratio=0.01)", "sign", "powersgd(rank=1)", "topk(ratio=0.05)|quant(bits=4)"]
)
def test_sent_plus_residual_equals_inputs(spec) -> None:
    rng = np.random.default_rng(0)
    shapes = [(40, 25), (1000,), (8, 3, 3, 3)]
    codec = make("ef:" + spec)
    state = codec.init([np.zeros(s, np.float32) for s in shapes])
    total_in = [np.zeros(s) for s in shapes]
    total_sent = [np.zeros(s) for s in shapes]
    for _ in range(50):
        x = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        state, enc = codec.encode(state, x, rng)
        assert enc.codec == spec.replace(" ", "") or enc.codec == make(spec).spec
        for t_in, t_sent, a, b in zip(total_in, total_sent, x, decode(enc), strict=True):
            t_in += a
            t_sent += b
    residual = state[0]
    for t_in, t_sent, e in zip(total_in, total_sent, residual, strict=True):
        gap = np.linalg.norm(t_sent + e - t_in) / np.linalg.norm(t_in)
        assert gap < 1e-6


def test_error_feedback_eventually_sends_small_coordinates() -> None:
    x = np.zeros(100, np.float32)
    x[0], x[1:] = 1.0, 0.05
    codec = with_error_feedback(make("topk(ratio=0.05)"))
    state = codec.init([x])
    sent = np.zeros(100)
    for _ in range(100):
        state, enc = codec.encode(state, [x], None)
        sent += codec.decode(enc)[0]
    assert np.count_nonzero(sent) == 100  # plain top-k would only ever send entry 0


def test_wrapper_spec_and_errors() -> None:
    codec = make("ef:sign")
    assert codec.spec == "ef:sign" and make(codec.spec).spec == "ef:sign"
    with pytest.raises(ValueError):
        with_error_feedback(codec)
    x = [np.ones(3, np.float32), np.arange(3)]
    state, enc = codec.encode(None, x, None)  # state defaults to init(x); ints pass through
    assert state[0][1] is None and enc.codec == "sign"
