"""fedkit values inside Flower records: params, encoded frames, codec memory, message sizes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower interop needs the extra: pip install 'fedkit[flower]'")

from flwr.app import ArrayRecord, RecordDict  # noqa: E402

from fedkit.compat.flower.records import (  # noqa: E402
    frame_to_record,
    load_codec_state,
    message_nbytes,
    params_to_record,
    record_frame,
    record_to_params,
    save_codec_state,
)
from fedkit.compression import decode, make  # noqa: E402


def _params() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    return [g.standard_normal((8, 5)).astype(np.float32), g.standard_normal(5).astype(np.float32)]


def test_params_round_trip_keeping_keys_and_dtypes() -> None:
    p = _params()
    rec = params_to_record(p, ["w", "b"])
    assert list(rec.keys()) == ["w", "b"]
    back = record_to_params(rec)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(p, back, strict=True))
    with pytest.raises(ValueError, match="2 keys for 1 arrays"):
        params_to_record(p[:1], ["w", "b"])


def test_a_frame_travels_byte_for_byte_and_is_not_mistaken_for_arrays() -> None:
    _, enc = make("topk(ratio=0.2)|quant(bits=8)|zstd").encode(None, _params())
    rec = frame_to_record(enc)
    got = record_frame(rec)
    assert got == enc
    assert record_frame(params_to_record(_params())) is None
    with pytest.raises(ValueError, match="holds a fedkit frame"):
        record_to_params(rec)


def test_message_bytes_follow_the_payload() -> None:
    p = _params()
    plain = message_nbytes(RecordDict({"arrays": params_to_record(p)}))
    assert plain > sum(a.nbytes for a in p)  # Flower's own framing comes on top
    _, enc = make("topk(ratio=0.1)|quant(bits=8)|zstd").encode(None, p)
    small = message_nbytes(RecordDict({"arrays": frame_to_record(enc)}))
    assert small < plain
    assert small - enc.nbytes < plain - sum(a.nbytes for a in p)  # one array: less framing


def test_error_feedback_memory_survives_a_flower_context() -> None:
    codec = make("ef:topk(ratio=0.1)")
    p = _params()
    memory, _ = codec.encode(codec.init(p), p, None)
    state = RecordDict()
    save_codec_state(state, codec.spec, memory)
    back = load_codec_state(state, codec.spec)
    assert load_codec_state(state, "topk(ratio=0.5)") is None  # another codec starts afresh
    assert load_codec_state(RecordDict(), codec.spec) is None
    # the residual carried over shapes the next frame exactly as the memory in hand does
    _, a = codec.encode(memory, p, None)
    _, b = codec.encode(back, p, None)
    _, fresh = codec.encode(codec.init(p), p, None)
    assert a == b and a != fresh
    assert np.array_equal(decode(a)[0], decode(b)[0])
    assert isinstance(state.array_records["fedkit.codec.arrays"], ArrayRecord)
