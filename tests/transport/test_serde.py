"""Task/Reply <-> protobuf round trips, chunking, and the reassembly checks."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedkit.compression.frame import unpack_arrays
from fedkit.transport._proto import fedkit_pb2 as pb
from fedkit.transport.serde import (
    Reassembler,
    TransportError,
    decode_reply,
    decode_task,
    encode_task,
    frame_head,
    reply_chunks,
    reply_from_proto,
    reply_to_proto,
    task_chunks,
    task_from_proto,
    task_to_proto,
)
from fedkit.types import Encoded, Reply, Task

from .conftest import enc

MiB = 1 << 20


def big_params() -> Encoded:
    rng = np.random.default_rng(0)
    return enc([rng.standard_normal((2500, 1000)).astype(np.float32), np.arange(7, dtype=np.int64)])


def test_task_round_trip_10mb_in_1mb_chunks() -> None:
    params = big_params()
    assert params.nbytes > 9.5 * MiB
    task = Task(round=3, client="c1", kind="train", params=params, config={"lr": 0.1, "epochs": 2},
                task_id="t-3")
    chunks = encode_task(task, chunk_bytes=MiB)
    assert len(chunks) == -(-params.nbytes // MiB)
    assert all(len(c.data) <= MiB for c in chunks)
    assert chunks[0].HasField("header") and not chunks[1].HasField("header")
    assert [c.last for c in chunks].count(True) == 1 and chunks[-1].last
    back = decode_task(chunks)
    assert back == task
    a, b = unpack_arrays(back.params.data)
    np.testing.assert_array_equal(a, unpack_arrays(params.data)[0])
    np.testing.assert_array_equal(b, np.arange(7))


def test_reply_round_trip_with_and_without_update() -> None:
    r = Reply(task_id="t", client="c", round=2, num_examples=5, update=big_params(),
              metrics={"loss": 1.5, "acc": 0.25})
    assert decode_reply(reply_chunks(r, MiB, session_id="s")) == r
    failed = Reply(task_id="t", client="c", round=2, error="boom")
    chunks = list(reply_chunks(failed))
    assert len(chunks) == 1 and chunks[0].header.payload_bytes == 0
    assert decode_reply(chunks) == failed
    empty_error = Reply(task_id="t", client="c", round=2, error="")
    assert decode_reply(reply_chunks(empty_error)).error == ""


def test_headers_and_frame_layout() -> None:
    e = Encoded("identity", b"xyz")
    assert frame_head(e) + e.data == e.to_bytes()
    h = task_to_proto(Task(round=1, client="c", kind="evaluate", params=e, task_id="i"), e.nbytes)
    assert h.config_json == "{}" and h.payload_bytes == e.nbytes
    assert task_from_proto(h, e.to_bytes()).params == e
    rh = reply_to_proto(Reply(task_id="i", client="c", round=1), 0)
    assert not rh.has_update and not rh.HasField("error")
    assert reply_from_proto(rh, b"").update is None


def test_config_must_be_json() -> None:
    t = Task(round=0, client="c", kind="train", params=Encoded("identity", b""),
             config={"f": object()})
    with pytest.raises(ValueError, match="JSON"):
        task_to_proto(t, 0)
    h = pb.TaskHeader(task_id="x", kind="train", config_json="[1]")
    with pytest.raises(TransportError, match="JSON object"):
        task_from_proto(h, Encoded("identity", b"").to_bytes())
    h = pb.TaskHeader(task_id="x", kind="Sing!", config_json="{}")
    with pytest.raises(TransportError, match="malformed kind"):
        task_from_proto(h, Encoded("identity", b"").to_bytes())


def test_chunk_sizes_are_configurable_and_tiny_chunks_work() -> None:
    e = Encoded("a-rather-long-codec-name", bytes(range(256)) * 10)
    task = Task(round=0, client="c", kind="train", params=e, task_id="t")
    for size in (1, 7, 64, 4096, 10**6):
        chunks = list(task_chunks(task, size))
        assert b"".join(c.data for c in chunks) == e.to_bytes()
        assert decode_task(chunks).params == e


def _chunks(total: int, size: int) -> list[pb.ReplyChunk]:
    r = Reply(task_id="t", client="c", round=0, update=Encoded("identity", bytes(total)))
    return list(reply_chunks(r, size))


def _status(chunks: list[pb.ReplyChunk], cap: int = 1 << 30) -> TransportError:
    with pytest.raises(TransportError) as ei:
        decode_reply(chunks, cap)
    return ei.value


def test_size_cap_is_resource_exhausted_before_buffering() -> None:
    chunks = _chunks(2000, 500)
    r = Reassembler(max_payload_bytes=1000)
    with pytest.raises(TransportError) as ei:
        r.feed(chunks[0])  # the declared size alone is refused
    assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 1000" in ei.value.message
    # a liar declaring a small size and sending more is also stopped at the cap
    chunks[0].header.payload_bytes = 100
    e = _status(chunks, cap=400)
    assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda cs: cs[0].ClearField("header"), "first chunk has no header"),
        (lambda cs: cs[1].header.CopyFrom(cs[0].header), "header repeated"),
        (lambda cs: setattr(cs[1], "offset", 7), "expected"),
        (lambda cs: cs.pop(1), "expected"),
        (lambda cs: cs.pop(), "without a last chunk"),
        (lambda cs: setattr(cs[0].header, "payload_bytes", 10), "header declared"),
        (lambda cs: setattr(cs[0].header, "payload_bytes", 10**6), "truncated"),
        (lambda cs: cs.append(pb.ReplyChunk(offset=2000, data=b"x")), "after the last"),
    ],
)
def test_inconsistent_chunk_sequences_are_invalid(mutate, message: str) -> None:
    chunks = _chunks(1990, 500)
    mutate(chunks)
    e = _status(chunks)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.message


def test_malformed_payload_names_the_problem() -> None:
    h = pb.ReplyHeader(task_id="t7", has_update=True, payload_bytes=7, update_kind=pb.UPDATE_KIND_DELTA)
    e = _status([pb.ReplyChunk(header=h, data=b"garbage", last=True)])
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed payload" in e.message and "bad magic" in e.message
    with pytest.raises(TransportError, match="t7.*malformed"):
        reply_from_proto(h, b"FKE1\xff")


@pytest.mark.parametrize("chunk", [5, 13, 14, 15, 100])
def test_reassembly_when_the_frame_head_spans_chunks(chunk: int) -> None:
    e = Encoded("identity", bytes(range(256)) * 3)
    t = Task(round=0, client="c", kind="train", params=e, task_id="t")
    r = Reassembler()
    for c in task_chunks(t, chunk):
        r.feed(c)
    assert r.encoded() == decode_task(task_chunks(t, chunk)).params == e
    bad = list(task_chunks(t, chunk))
    bad[0].data = b"XXXX" + bad[0].data[4:]
    with pytest.raises(TransportError, match="bad magic"):
        decode_task(bad)


# ---- split batches ---------------------------------------------------------------------------


def _split_frame(step: int = 0, kind: str = "activations", labels: bool = True):
    from fedkit.split.wire import SplitFrame

    a = np.random.default_rng(step).standard_normal((8, 33)).astype(np.float32)
    y = enc([np.arange(8, dtype=np.int64)]) if labels else None
    return SplitFrame(step, kind, enc([a]), y, {"loss": 0.5})  # type: ignore[arg-type]


def _feed_all(asm, msgs):
    out = [asm.feed(m.WhichOneof("body"), getattr(m, m.WhichOneof("body"))) for m in msgs]
    assert all(o is None for o in out[:-1])
    return out[-1]


@pytest.mark.parametrize("chunk", [1, 5, 6, 7, 100, 1056, 1057, 1058, 1 << 20])
@pytest.mark.parametrize("labels", [True, False])
def test_split_batch_round_trip_at_any_chunk_size(chunk: int, labels: bool) -> None:
    from fedkit.transport.serde import SplitAssembler, split_messages

    f = _split_frame(labels=labels)
    msgs = list(split_messages(f, chunk))
    assert len(msgs) == max(1, -(-f.nbytes // chunk))
    assert sum(len(m.activations.payload) + len(m.activations.labels) for m in msgs) == f.nbytes
    got = _feed_all(SplitAssembler(f.nbytes, ordered=True), msgs)
    assert got == f  # payload and labels bytes, step, kind and metrics, exactly


def test_split_step_order_and_caps() -> None:
    from fedkit.transport.serde import SplitAssembler, split_messages

    asm = SplitAssembler(1 << 20, "up", ordered=True)
    for step, kind in [(0, "activations"), (0, "gradients"), (1, "activations"), (2, "activations")]:
        assert _feed_all(asm, list(split_messages(_split_frame(step, kind)))) is not None
    for step, kind in [(2, "activations"), (4, "activations"), (3, "gradients"), (1, "gradients")]:
        with pytest.raises(TransportError, match="out of order") as ei:
            _feed_all(asm, list(split_messages(_split_frame(step, kind))))
        assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    small = SplitAssembler(100, "up")
    f = _split_frame()
    first = next(split_messages(f, 10))
    with pytest.raises(TransportError, match=f"declares {f.nbytes} bytes, over the limit of 100 ") as ei:
        small.feed("activations", first.activations)
    assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ms: ms[1:], "starts at offset"),
        (lambda ms: [ms[0], ms[2]], "chunk at offset"),
        (lambda ms: ms[:2] + [pb.SplitMessage(gradients=ms[2].activations)] + ms[3:], "inside the batch"),
        (lambda ms: [ms[0], pb.SplitMessage(activations=pb.SplitBatch(
            step=0, offset=500, payload_bytes=1, payload=ms[1].activations.payload))], "after the first"),
        (lambda ms: [*ms[:-1], pb.SplitMessage(activations=pb.SplitBatch(
            step=0, offset=ms[-1].activations.offset, labels=b"x" * 999, last=True))], "bytes received"),
        (lambda ms: [*ms[:-1], pb.SplitMessage(activations=pb.SplitBatch(
            step=0, offset=ms[-1].activations.offset, last=True))], "truncated"),
    ],
)
def test_inconsistent_split_chunks_are_invalid(mutate, message: str) -> None:
    from fedkit.transport.serde import SplitAssembler, split_messages

    msgs = list(split_messages(_split_frame(), 200))
    with pytest.raises(TransportError, match=message) as ei:
        _feed_all(SplitAssembler(1 << 20), mutate(msgs))
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
