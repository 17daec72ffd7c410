"""A fedkit.v1 client written from protos/ alone: stubs generated from the .proto, frames built
by hand from protos/README.md. It imports nothing of fedkit (the test runs it in a subprocess
with only the generated stubs on PYTHONPATH and checks that).

    python conformance_client.py ADDRESS NAME TOKEN

Train: the update is local - global with local = 0.99 x global (a stand-in for training), as
identity frames. Evaluate: fixed metrics. Prints what it did as one JSON line, exits 0 on
Shutdown.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array

import fedkit_pb2 as pb  # generated from protos/fedkit/v1/fedkit.proto
import fedkit_pb2_grpc as pb_grpc
import grpc

MAGIC = b"FKE1"
ITEMSIZE = {0: 4}  # dtype code 0 = float32: all this client handles (the models' parameters)


def frame(codec: str, data: bytes) -> bytes:
    name = codec.encode()
    return MAGIC + struct.pack("<H", len(name)) + name + data


def parse_frame(buf: bytes) -> tuple[str, bytes]:
    if buf[:4] != MAGIC:
        raise ValueError("not an Encoded frame")
    (n,) = struct.unpack_from("<H", buf, 4)
    return buf[6 : 6 + n].decode(), buf[6 + n :]


def parse_identity(data: bytes) -> list[tuple[list[int], array]]:
    """identity data -> [(shape, float32 values)] in the model's tensor order."""
    (count,) = struct.unpack_from("<I", data, 0)
    off, heads = 4, []
    for _ in range(count):
        code, ndim = struct.unpack_from("<BB", data, off)
        off += 2
        shape = list(struct.unpack_from(f"<{ndim}Q", data, off))
        off += 8 * ndim
        if code not in ITEMSIZE:
            raise ValueError(f"dtype code {code} not supported by this client")
        heads.append(shape)
    tensors = []
    for shape in heads:
        n = 1
        for d in shape:
            n *= d
        values = array("f")
        values.frombytes(data[off : off + 4 * n])
        if sys.byteorder != "little":
            values.byteswap()
        off += 4 * n
        tensors.append((shape, values))
    if off != len(data):
        raise ValueError("trailing bytes")
    return tensors


def build_identity(tensors: list[tuple[list[int], array]]) -> bytes:
    out = [struct.pack("<I", len(tensors))]
    out += [struct.pack(f"<BB{len(s)}Q", 0, len(s), *s) for s, _ in tensors]
    for _, values in tensors:
        v = array("f", values)
        if sys.byteorder != "little":
            v.byteswap()
        out.append(v.tobytes())
    return b"".join(out)


def chunks(header: pb.ReplyHeader, payload: bytes, size: int):
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    for i, piece in enumerate(pieces):
        c = pb.ReplyChunk(offset=i * size, data=piece, last=i == len(pieces) - 1)
        if i == 0:
            c.header.CopyFrom(header)
        yield c


def main(address: str, name: str, token: str) -> int:
    done = {"train": 0, "evaluate": 0, "acks": 0}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.FedKitStub(channel)
        md = (("fedkit-client", name), ("authorization", f"Bearer {token}"))
        stream = stub.Join(pb.JoinRequest(name=name, protocol="fedkit.v1"), metadata=md)
        welcome = next(stream).welcome
        size = welcome.chunk_bytes
        header, parts = None, []
        for msg in stream:
            kind = msg.WhichOneof("body")
            if kind == "shutdown":
                break
            if kind != "task":
                continue
            if msg.task.HasField("header"):
                header, parts = msg.task.header, []
            parts.append(msg.task.data)
            if not msg.task.last:
                continue
            codec, data = parse_frame(b"".join(parts))
            config = json.loads(header.config_json)
            assert codec == "identity" and config["schema_version"] == 1
            assert config["downlink"]["mode"] == "full"
            model = parse_identity(data)
            h = pb.ReplyHeader(session_id=welcome.session_id, task_id=header.task_id, round=header.round,
                               client=name, version=header.version)
            payload = b""
            if header.kind == "train":
                delta = [(shape, array("f", (-0.01 * v for v in values))) for shape, values in model]
                payload = frame("identity", build_identity(delta))
                h.num_examples, h.has_update, h.payload_bytes = 10, True, len(payload)
                h.update_kind = pb.UPDATE_KIND_DELTA
                h.metrics["train_loss"] = 1.0
            else:
                h.num_examples = 20
                h.metrics["loss"], h.metrics["accuracy"] = 2.0, 0.5
            ack = stub.PushReply(chunks(h, payload, size), timeout=30)  # no metadata: the session id
            done[header.kind] += 1
            done["acks"] += ack.task_id == header.task_id
        stream.cancel()
    done["fedkit_imported"] = any(m == "fedkit" or m.startswith("fedkit.") for m in sys.modules)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
