"""Flower records <-> fedkit values: params as ``ArrayRecord``s, fedkit's encoded frames inside
Flower messages, codec memory kept in a Flower ``Context``, and what a message costs on
Flower's wire.

A fedkit frame (:class:`~fedkit.types.Encoded`, the exact bytes fedkit would send) travels as an
``ArrayRecord`` holding one ``Array`` whose ``stype`` is :data:`FRAME_STYPE` and whose ``data``
is ``Encoded.to_bytes()``: Flower moves it like any array (chunked, content-addressed), and a
receiver that does not know it fails loudly on ``Array.numpy()`` instead of reading garbage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedkit.types import Encoded, Params

FRAME_STYPE = "fedkit.frame"
"""``Array.stype`` of an array whose data is a fedkit encoded frame."""
FRAME_KEY = "fedkit.frame"
"""Key of that array inside its ``ArrayRecord``."""


def params_to_record(params: Params, keys: Sequence[str] | None = None) -> ArrayRecord:
    """Params as an ``ArrayRecord`` (keys ``"0"``, ``"1"``... unless ``keys`` are given)."""
    arrays = [np.asarray(a) for a in params]
    if keys is None:
        return ArrayRecord(arrays)
    keys = list(keys)
    if len(keys) != len(arrays):
        raise ValueError(f"{len(keys)} keys for {len(arrays)} arrays")
    return ArrayRecord({k: Array(a) for k, a in zip(keys, arrays, strict=True)})


def record_to_params(record: ArrayRecord) -> Params:
    """The arrays of a plain ``ArrayRecord``, in its order; a fedkit frame is an error."""
    if record_frame(record) is not None:
        raise ValueError("this ArrayRecord holds a fedkit frame: decode it (fedkit.compat.flower.Decoding)")
    return list(record.to_numpy_ndarrays())


def frame_to_record(enc: Encoded) -> ArrayRecord:
    """An ``ArrayRecord`` carrying ``enc`` byte for byte."""
    data = enc.to_bytes()
    return ArrayRecord({FRAME_KEY: Array(dtype="uint8", shape=(len(data),), stype=FRAME_STYPE, data=data)})


def record_frame(record: ArrayRecord) -> Encoded | None:
    """The fedkit frame inside ``record``, or None when it is a plain record of arrays."""
    arrays = list(record.values())
    if any(a.stype == FRAME_STYPE for a in arrays):
        if len(arrays) != 1:
            raise ValueError(f"a fedkit frame must be alone in its ArrayRecord, found {len(arrays)} arrays")
        return Encoded.from_bytes(arrays[0].data)
    return None


def only_array_record(content: RecordDict, what: str) -> tuple[str, ArrayRecord]:
    """The single ``ArrayRecord`` of a message's content (Flower's convention), with its key."""
    records = list(content.array_records.items())
    if len(records) != 1:
        raise ValueError(f"{what}: expected exactly one ArrayRecord, found {len(records)}")
    return records[0]


def message_nbytes(obj: Message | RecordDict) -> int:
    """Bytes of ``obj`` on Flower's wire (1.42): every object of its tree (message, records,
    arrays, array chunks) deflated once, as Flower pushes them; identical objects are sent
    once, since Flower addresses them by content hash."""
    return sum(len(o.deflate()) for o in get_all_nested_objects(obj).values())


# --- codec memory in a Flower Context ---------------------------------------------------------

_STATE_ARRAYS = "fedkit.codec.arrays"
_STATE_META = "fedkit.codec.meta"


def _pack(obj: Any, arrays: list[np.ndarray]) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str):
        return {"v": obj}
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"a": len(arrays) - 1}
    if isinstance(obj, tuple | list):
        return {"t" if isinstance(obj, tuple) else "l": [_pack(x, arrays) for x in obj]}
    raise TypeError(f"cannot keep codec state of type {type(obj).__name__} in a Flower context")


def _unpack(node: Any, arrays: list[np.ndarray]) -> Any:
    if "v" in node:
        return node["v"]
    if "a" in node:
        return arrays[node["a"]]
    items = [_unpack(x, arrays) for x in node.get("t", node.get("l", []))]
    return tuple(items) if "t" in node else items


def save_codec_state(state: RecordDict, spec: str, memory: Any) -> None:
    """Keep a codec's encoder memory (error-feedback residuals, warm starts) in a Flower
    ``Context.state``, the only client state Flower carries from one round to the next."""
    arrays: list[np.ndarray] = []
    tree = json.dumps(_pack(memory, arrays))
    state[_STATE_ARRAYS] = ArrayRecord(arrays)
    state[_STATE_META] = ConfigRecord({"spec": spec, "tree": tree})


def load_codec_state(state: RecordDict, spec: str) -> Any:
    """The memory :func:`save_codec_state` kept for ``spec``, or None (first round, or the
    codec changed)."""
    if _STATE_META not in state.config_records:
        return None
    meta = state.config_records[_STATE_META]
    if meta.get("spec") != spec:
        return None
    arrays = list(state.array_records[_STATE_ARRAYS].to_numpy_ndarrays())
    return _unpack(json.loads(str(meta["tree"])), arrays)
