"""SecAgg+: dropout-tolerant secure aggregation over a sparse graph, as explicit stages.

References: Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (SecAgg+); Bonawitz et al., "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017 (the protocol it sparsifies;
``degree = n - 1`` gives it back). Semi-honest server: it follows the protocol but reads
everything it holds; it learns the sum of at least ``min_survivors`` inputs and nothing else.

Four exchanges inside one round, each a client function and a server ``close_*``:

====  ===============  ===================================  ==============================
 st   name             client -> server                     server -> each client
====  ===============  ===================================  ==============================
 0    advertise-keys   ``advertise``: 2 X25519 public keys  ``Neighbours``: graph + keys
 1    share-keys       ``share_keys``: Shamir shares of     ``ShareInbox``: ciphertexts
                       the self-mask seed b_u and the mask  addressed to it
                       key s_u, sealed to each neighbour
 2    masked-input     ``masked_input``: y_u = x_u + PRG(b_u)  ``UnmaskRequest``: which
                       + sum_v +-PRG(s_uv) mod 2^bits       neighbours survived / dropped
 3    unmask           ``unmask``: b-shares of survivors,   (server outputs the sum)
                       s-shares of dropouts, never both
====  ===============  ===================================  ==============================

Messages are frozen dataclasses with ``encode_message`` / ``decode_message`` to bytes (no
pickle); client and server state are frozen values, ``f(state, msg) -> (state, out)``. The
server keeps only the running sum of masked inputs, never an individual vector. Dropouts: a
client may vanish before any of its sends; the round still yields the exact sum while every
client whose secret is needed keeps at least ``threshold`` live neighbours (and at least
``min_survivors`` inputs arrive); otherwise ``SecAggAbort`` names the stage and the counts.
Inputs must already be field integers (``fedkit.secure.field.quantize``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedkit import rng as frng
from fedkit.secure import crypto, shamir
from fedkit.secure.field import FieldSpec
from fedkit.secure.graph import degree_for, harary, threshold_for

STAGES = ("advertise-keys", "share-keys", "masked-input", "unmask")
"""Stage names, in order; errors and abort reasons use them."""

_COEFF_BYTES = 72  # 576 random bits per coefficient mod M521: bias < 2^-55


class SecAggError(ValueError):
    """A message broke the protocol: wrong stage, sender, shape, or failed authentication."""


class LateMessage(SecAggError):
    """A message for a stage the server has already closed (a straggler): drop it."""


class SecAggAbort(SecAggError):
    """Too many dropouts: the round cannot produce the sum. Names the stage and counts."""

    def __init__(self, round: int, stage: str, what: str, needed: int, got: int) -> None:
        self.round, self.stage, self.needed, self.got = round, stage, needed, got
        super().__init__(
            f"secagg round {round} aborted at stage {stage!r}: {what} "
            f"(needed {needed}, got {got})")


@dataclass(frozen=True)
class SecAggConfig:
    """Protocol parameters shared by server and clients.

    ``degree`` k and ``threshold`` t default to ``graph.degree_for(n)`` and
    ``graph.threshold_for(k)`` for the n clients that advertise keys (the module docstring of
    ``fedkit.secure.graph`` explains the choice); ``degree=None`` with ``complete=True`` gives
    Bonawitz's k = n - 1. ``min_survivors`` (default max(2, t)) is the fewest inputs the
    server may sum. ``seed`` keys the graph.
    """

    dim: int
    field: FieldSpec
    degree: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None
    complete: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"secagg: dim must be >= 1, got {self.dim}")
        if self.degree is not None and self.degree < 1:
            raise ValueError(f"secagg: degree must be >= 1, got {self.degree}")
        if self.threshold is not None and self.threshold < 1:
            raise ValueError(f"secagg: threshold must be >= 1, got {self.threshold}")
        if self.min_survivors is not None and self.min_survivors < 2:
            raise ValueError("secagg: min_survivors must be >= 2 (a sum of one is that input)")
        if self.complete and self.degree is not None:
            raise ValueError("secagg: give either degree or complete=True, not both")


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class AdvertiseKeys:
    round: int
    client: str
    enc_pk: bytes
    mask_pk: bytes


@dataclass(frozen=True)
class PeerKeys:
    client: str
    enc_pk: bytes
    mask_pk: bytes


@dataclass(frozen=True)
class Neighbours:
    round: int
    client: str
    threshold: int
    peers: tuple[PeerKeys, ...]


@dataclass(frozen=True)
class ShareKeys:
    round: int
    client: str
    sealed: tuple[tuple[str, bytes], ...]  # (receiver, ciphertext)


@dataclass(frozen=True)
class ShareInbox:
    round: int
    client: str
    sealed: tuple[tuple[str, bytes], ...]  # (sender, ciphertext)


@dataclass(frozen=True)
class MaskedInput:
    round: int
    client: str
    vector: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    round: int
    client: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskShares:
    round: int
    client: str
    self_mask: tuple[tuple[str, bytes], ...]  # (owner, share of b_owner), owner survived
    mask_key: tuple[tuple[str, bytes], ...]   # (owner, share of s_owner), owner dropped


Message = (AdvertiseKeys | Neighbours | ShareKeys | ShareInbox | MaskedInput
           | UnmaskRequest | UnmaskShares)


def _pack(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _unpack(buf: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(buf):
        if at + 4 > len(buf):
            raise SecAggError("message truncated inside a length prefix")
        (n,) = struct.unpack_from("<I", buf, at)
        if at + 4 + n > len(buf):
            raise SecAggError("message truncated inside a field")
        out.append(bytes(buf[at + 4 : at + 4 + n]))
        at += 4 + n
    return out


def _int(b: bytes) -> int:
    if len(b) != 8:
        raise SecAggError("bad integer field")
    return struct.unpack("<q", b)[0]


def _str(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError as e:
        raise SecAggError("client name is not UTF-8") from e


def _pairs_enc(pairs: Sequence[tuple[str, bytes]]) -> bytes:
    return _pack([_pack([c.encode(), v]) for c, v in pairs])


def _pairs_dec(buf: bytes) -> tuple[tuple[str, bytes], ...]:
    out = []
    for item in _unpack(buf):
        parts = _unpack(item)
        if len(parts) != 2:
            raise SecAggError("bad (client, bytes) pair")
        out.append((_str(parts[0]), parts[1]))
    return tuple(out)


def _strs_enc(names: Sequence[str]) -> bytes:
    return _pack([c.encode() for c in names])


def _strs_dec(buf: bytes) -> tuple[str, ...]:
    return tuple(_str(b) for b in _unpack(buf))


def _array_enc(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    if a.dtype.kind != "u" or a.ndim != 1:
        raise SecAggError("masked vector must be a 1-d unsigned integer array")
    return _pack([a.dtype.newbyteorder("<").str.encode(), a.astype(a.dtype.newbyteorder("<")).tobytes()])


def _array_dec(buf: bytes) -> np.ndarray:
    parts = _unpack(buf)
    if len(parts) != 2 or parts[0] not in (b"<u4", b"<u8"):
        raise SecAggError("bad masked vector (dtype must be <u4 or <u8)")
    dt = np.dtype(parts[0].decode())
    if len(parts[1]) % dt.itemsize:
        raise SecAggError("masked vector bytes are not a whole number of words")
    return np.frombuffer(parts[1], dtype=dt).astype(dt.newbyteorder("="), copy=False)


# Each kind: (tag, fields -> list[bytes], list[bytes] -> message)
_i = lambda v: struct.pack("<q", v)  # noqa: E731
_CODECS: dict[type, tuple[int, Callable, Callable]] = {
    AdvertiseKeys: (1, lambda m: [_i(m.round), m.client.encode(), m.enc_pk, m.mask_pk],
                    lambda f: AdvertiseKeys(_int(f[0]), _str(f[1]), f[2], f[3])),
    Neighbours: (2, lambda m: [_i(m.round), m.client.encode(), _i(m.threshold),
                               _pack([_pack([p.client.encode(), p.enc_pk, p.mask_pk])
                                      for p in m.peers])],
                 lambda f: Neighbours(_int(f[0]), _str(f[1]), _int(f[2]), tuple(
                     _peer(_unpack(p)) for p in _unpack(f[3])))),
    ShareKeys: (3, lambda m: [_i(m.round), m.client.encode(), _pairs_enc(m.sealed)],
                lambda f: ShareKeys(_int(f[0]), _str(f[1]), _pairs_dec(f[2]))),
    ShareInbox: (4, lambda m: [_i(m.round), m.client.encode(), _pairs_enc(m.sealed)],
                 lambda f: ShareInbox(_int(f[0]), _str(f[1]), _pairs_dec(f[2]))),
    MaskedInput: (5, lambda m: [_i(m.round), m.client.encode(), _array_enc(m.vector)],
                  lambda f: MaskedInput(_int(f[0]), _str(f[1]), _array_dec(f[2]))),
    UnmaskRequest: (6, lambda m: [_i(m.round), m.client.encode(), _strs_enc(m.survivors),
                                  _strs_enc(m.dropped)],
                    lambda f: UnmaskRequest(_int(f[0]), _str(f[1]), _strs_dec(f[2]),
                                            _strs_dec(f[3]))),
    UnmaskShares: (7, lambda m: [_i(m.round), m.client.encode(), _pairs_enc(m.self_mask),
                                 _pairs_enc(m.mask_key)],
                   lambda f: UnmaskShares(_int(f[0]), _str(f[1]), _pairs_dec(f[2]),
                                          _pairs_dec(f[3]))),
}
_BY_TAG = {tag: (cls, dec) for cls, (tag, _, dec) in _CODECS.items()}
_MAGIC = b"FKSA"


def _peer(parts: list[bytes]) -> PeerKeys:
    if len(parts) != 3:
        raise SecAggError("bad peer entry")
    return PeerKeys(_str(parts[0]), parts[1], parts[2])


def encode_message(msg: Message) -> bytes:
    """The bytes that cross the wire for one protocol message."""
    tag, enc, _ = _CODECS[type(msg)]
    return _MAGIC + bytes([tag]) + _pack(enc(msg))


def decode_message(buf: bytes) -> Message:
    """Inverse of ``encode_message``; SecAggError on anything malformed."""
    buf = bytes(buf)
    if len(buf) < 5 or buf[:4] != _MAGIC or buf[4] not in _BY_TAG:
        raise SecAggError("not a secagg message (bad magic or kind)")
    _, dec = _BY_TAG[buf[4]]
    try:
        return dec(_unpack(buf[5:]))
    except IndexError as e:
        raise SecAggError("secagg message has too few fields") from e


# ---------------------------------------------------------------------------- key schedule


def sim_secret(seed: int, round: int, client: str) -> bytes:
    """A client's 32 bytes of private randomness for one round, keyed by (seed, round, client).

    Simulation only: whoever knows the seed knows every key. A deployed client passes
    ``os.urandom(32)`` instead; nothing else changes.
    """
    return frng.rng(seed, "secagg-secret", round, client).bytes(32)


def _ctx(round: int, a: str, b: str) -> bytes:
    return _pack([_i(round), a.encode(), b.encode()])


def _enc_sk(secret: bytes) -> bytes:
    return crypto.derive(secret, b"fedkit/secagg/enc-key")


def _mask_sk(secret: bytes) -> bytes:
    return crypto.derive(secret, b"fedkit/secagg/mask-key")


def _self_seed(secret: bytes) -> bytes:
    return crypto.derive(secret, b"fedkit/secagg/self-mask")


def _share_key(sk: X25519PrivateKey, peer_pk: bytes, round: int, sender: str, receiver: str) -> bytes:
    # one key per direction, so the two ends of a pair never reuse a (key, nonce)
    return crypto.agree(sk, peer_pk, b"fedkit/secagg/share" + _ctx(round, sender, receiver))


def _pair_seed(sk: X25519PrivateKey, peer_pk: bytes, round: int, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    return crypto.agree(sk, peer_pk, b"fedkit/secagg/pair-mask" + _ctx(round, lo, hi))


def _sign(me: str, other: str) -> int:
    return 1 if me < other else -1


# ---------------------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientState:
    """One client's protocol state for one round (a value; ``secret`` stays on the client)."""

    config: SecAggConfig
    round: int
    client: str
    secret: bytes
    stage: str = STAGES[0]
    threshold: int = 0
    peers: Mapping[str, PeerKeys] = field(default_factory=dict)
    held: Mapping[str, tuple[bytes, bytes]] = field(default_factory=dict)  # owner -> shares
    masked_with: tuple[str, ...] = ()


def _expect(state: ClientState, stage: str, msg: Message) -> None:
    if state.stage != stage:
        raise SecAggError(
            f"secagg client {state.client}: got {type(msg).__name__} in stage {state.stage!r}")
    if msg.round != state.round or msg.client != state.client:
        raise SecAggError(
            f"secagg client {state.client}: message for client {msg.client!r} round "
            f"{msg.round}, expected round {state.round}")


def advertise(
    config: SecAggConfig, round: int, client: str, secret: bytes,
) -> tuple[ClientState, AdvertiseKeys]:
    """Stage 0: a fresh state and the two public keys derived from the client's secret."""
    if len(secret) != 32:
        raise ValueError("secagg: a client's secret must be 32 bytes")
    state = ClientState(config=config, round=round, client=client, secret=secret)
    msg = AdvertiseKeys(round, client, crypto.public_key(_enc_sk(secret)),
                        crypto.public_key(_mask_sk(secret)))
    return replace(state, stage=STAGES[1]), msg


def share_keys(state: ClientState, msg: Neighbours) -> tuple[ClientState, ShareKeys]:
    """Stage 1: Shamir-share b_u and s_u among the neighbours, sealed to each one."""
    _expect(state, STAGES[1], msg)
    peers = sorted(msg.peers, key=lambda p: p.client)
    names = [p.client for p in peers]
    if state.client in names or len(set(names)) != len(names):
        raise SecAggError(f"secagg client {state.client}: neighbour list repeats or has itself")
    k, t = len(peers), msg.threshold
    if not 1 <= t <= k:
        raise SecAggError(f"secagg client {state.client}: threshold {t} with {k} neighbours")
    rand = crypto.stream(crypto.derive(state.secret, b"fedkit/secagg/shamir"),
                         2 * (t - 1) * _COEFF_BYTES + k * crypto.NONCE_BYTES)
    coeffs = [int.from_bytes(rand[i : i + _COEFF_BYTES], "big")
              for i in range(0, 2 * (t - 1) * _COEFF_BYTES, _COEFF_BYTES)]
    nonces = rand[2 * (t - 1) * _COEFF_BYTES :]
    xs = list(range(1, k + 1))
    b_sh = shamir.split(int.from_bytes(_self_seed(state.secret), "big"), t, xs, coeffs[: t - 1])
    s_sh = shamir.split(int.from_bytes(_mask_sk(state.secret), "big"), t, xs, coeffs[t - 1 :])
    enc_sk = crypto.private_key(_enc_sk(state.secret))
    sealed = []
    for j, p in enumerate(peers):
        plain = _pack([state.client.encode(), p.client.encode(),
                       shamir.share_to_bytes(b_sh[j]), shamir.share_to_bytes(s_sh[j])])
        key = _share_key(enc_sk, p.enc_pk, state.round, state.client, p.client)
        nonce = nonces[j * crypto.NONCE_BYTES : (j + 1) * crypto.NONCE_BYTES]
        sealed.append((p.client, crypto.seal(key, nonce, plain,
                                              _ctx(state.round, state.client, p.client))))
    new = replace(state, stage=STAGES[2], threshold=t, peers={p.client: p for p in peers})
    return new, ShareKeys(state.round, state.client, tuple(sealed))


def masked_input(
    state: ClientState, msg: ShareInbox, x: np.ndarray,
) -> tuple[ClientState, MaskedInput]:
    """Stage 2: open the neighbours' shares, send x + PRG(b_u) + sum +-PRG(s_uv) mod 2^bits."""
    _expect(state, STAGES[2], msg)
    spec, me = state.config.field, state.client
    x = np.asarray(x)
    if x.dtype != spec.dtype or x.shape != (state.config.dim,):
        raise ValueError(f"secagg client {me}: input must be {np.dtype(spec.dtype)} of shape "
                         f"({state.config.dim},), got {x.dtype} {x.shape}")
    if x.size and int(x.max()) > spec.levels:
        raise ValueError(f"secagg client {me}: input exceeds the field's {spec.levels} levels")
    enc_sk, held = crypto.private_key(_enc_sk(state.secret)), {}
    for sender, ct in msg.sealed:
        if sender not in state.peers or sender in held:
            raise SecAggError(f"secagg client {me}: share from {sender!r}, not a neighbour "
                              "or repeated")
        key = _share_key(enc_sk, state.peers[sender].enc_pk, state.round, sender, me)
        try:
            plain = crypto.open_sealed(key, ct, _ctx(state.round, sender, me))
        except crypto.AuthenticationError as e:
            raise SecAggError(f"secagg client {me}, stage {STAGES[2]!r}: ciphertext from "
                              f"{sender} failed authentication (tampered or misaddressed)") from e
        parts = _unpack(plain)
        if len(parts) != 4 or parts[0] != sender.encode() or parts[1] != me.encode():
            raise SecAggError(f"secagg client {me}: share from {sender} is misaddressed")
        held[sender] = (parts[2], parts[3])
    y = x + crypto.prg(_self_seed(state.secret), x.size, spec.dtype)
    mask_sk = crypto.private_key(_mask_sk(state.secret))
    for v in sorted(held):
        pm = crypto.prg(_pair_seed(mask_sk, state.peers[v].mask_pk, state.round, me, v),
                        x.size, spec.dtype)
        y = y + pm if _sign(me, v) > 0 else y - pm
    new = replace(state, stage=STAGES[3], held=held, masked_with=tuple(sorted(held)))
    return new, MaskedInput(state.round, me, y)


def unmask(state: ClientState, msg: UnmaskRequest) -> tuple[ClientState, UnmaskShares]:
    """Stage 3: for each neighbour it masked with, reveal b-share if it survived, else s-share."""
    _expect(state, STAGES[3], msg)
    alive, gone = set(msg.survivors), set(msg.dropped)
    if alive & gone or alive | gone != set(state.masked_with):
        raise SecAggError(
            f"secagg client {state.client}: unmask request must split its {len(state.masked_with)}"
            " masking neighbours into survivors and dropouts, each exactly once")
    out = UnmaskShares(
        state.round, state.client,
        tuple((u, state.held[u][0]) for u in sorted(alive)),
        tuple((u, state.held[u][1]) for u in sorted(gone)))
    return replace(state, stage="done", held={}), out


# ---------------------------------------------------------------------------- server


@dataclass(frozen=True)
class Aggregate:
    """The protocol's output: the field sum of the survivors' inputs (and the graph used)."""

    round: int
    total: np.ndarray
    survivors: tuple[str, ...]
    degree: int
    threshold: int


@dataclass(frozen=True)
class ServerState:
    """What the server holds; it never contains an individual input or masked input."""

    config: SecAggConfig
    round: int
    sampled: tuple[str, ...]
    stage: str = STAGES[0]
    degree: int = 0
    threshold: int = 0
    keys: Mapping[str, AdvertiseKeys] = field(default_factory=dict)
    graph: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sealed: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)  # sender->recv->ct
    u2: tuple[str, ...] = ()
    u3: tuple[str, ...] = ()
    masked_sum: np.ndarray | None = None
    revealed: Mapping[str, UnmaskShares] = field(default_factory=dict)

    @property
    def min_survivors(self) -> int:
        return self.config.min_survivors or max(2, self.threshold)


def server_init(config: SecAggConfig, round: int, sampled: Sequence[str]) -> ServerState:
    """A server state for one round over the sampled clients."""
    names = tuple(sorted(sampled))
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError("secagg: need at least 2 distinct sampled clients")
    config.field.check_clients(len(names))
    return ServerState(config=config, round=round, sampled=names)


def _check_msg(state: ServerState, msg: Message, stage: str, allowed: Sequence[str],
               seen: Mapping[str, object] | Sequence[str]) -> None:
    at, want = STAGES.index(state.stage) if state.stage in STAGES else 4, STAGES.index(stage)
    if at > want:
        raise LateMessage(f"secagg round {state.round}: {type(msg).__name__} from "
                          f"{msg.client} after stage {stage!r} closed")
    if at < want:
        raise SecAggError(f"secagg round {state.round}: {type(msg).__name__} from "
                          f"{msg.client} before stage {stage!r} opened")
    if msg.round != state.round:
        raise SecAggError(f"secagg: message for round {msg.round} in round {state.round}")
    if msg.client not in allowed:
        raise SecAggError(f"secagg round {state.round}, stage {stage!r}: {msg.client!r} is not "
                          "a participant of this stage")
    if msg.client in seen:
        raise SecAggError(f"secagg round {state.round}, stage {stage!r}: second message from "
                          f"{msg.client}")


def _recv_advertise(state: ServerState, msg: AdvertiseKeys) -> ServerState:
    _check_msg(state, msg, STAGES[0], state.sampled, state.keys)
    if len(msg.enc_pk) != 32 or len(msg.mask_pk) != 32 or msg.enc_pk == msg.mask_pk:
        raise SecAggError(f"secagg: {msg.client} advertised malformed public keys")
    return replace(state, keys={**state.keys, msg.client: msg})


def _recv_share(state: ServerState, msg: ShareKeys) -> ServerState:
    _check_msg(state, msg, STAGES[1], tuple(state.keys), state.sealed)
    to = dict(msg.sealed)
    if len(to) != len(msg.sealed) or set(to) != set(state.graph[msg.client]):
        raise SecAggError(f"secagg: {msg.client} must seal one share to each of its "
                          f"{len(state.graph[msg.client])} neighbours")
    return replace(state, sealed={**state.sealed, msg.client: to})


def _recv_masked(state: ServerState, msg: MaskedInput) -> ServerState:
    _check_msg(state, msg, STAGES[2], state.u2, state.u3)
    spec = state.config.field
    if msg.vector.dtype != spec.dtype or msg.vector.shape != (state.config.dim,):
        raise SecAggError(f"secagg: masked input from {msg.client} must be "
                          f"{np.dtype(spec.dtype)} of shape ({state.config.dim},)")
    total = state.masked_sum if state.masked_sum is not None else np.zeros(
        state.config.dim, spec.dtype)
    return replace(state, masked_sum=total + msg.vector, u3=(*state.u3, msg.client))


def _recv_unmask(state: ServerState, msg: UnmaskShares) -> ServerState:
    _check_msg(state, msg, STAGES[3], state.u3, state.revealed)
    alive, gone = _split_neighbours(state, msg.client)
    if ([u for u, _ in msg.self_mask] != alive or [u for u, _ in msg.mask_key] != gone):
        raise SecAggError(f"secagg: {msg.client} revealed shares for the wrong clients")
    return replace(state, revealed={**state.revealed, msg.client: msg})


_RECEIVE: dict[type, Callable[[ServerState, Any], ServerState]] = {
    AdvertiseKeys: _recv_advertise, ShareKeys: _recv_share,
    MaskedInput: _recv_masked, UnmaskShares: _recv_unmask,
}


def receive(state: ServerState, msg: Message) -> ServerState:
    """Take one client message of the open stage (masked inputs go straight into the sum)."""
    try:
        handler = _RECEIVE[type(msg)]
    except KeyError:
        raise SecAggError(f"secagg: the server does not accept {type(msg).__name__}") from None
    return handler(state, msg)


def _split_neighbours(state: ServerState, v: str) -> tuple[list[str], list[str]]:
    """v's masking neighbours (those in U2) split into survivors (U3) and dropouts."""
    u2, u3 = set(state.u2), set(state.u3)
    mates = [u for u in state.graph[v] if u in u2]
    return [u for u in mates if u in u3], [u for u in mates if u not in u3]


def _needed(state: ServerState) -> list[str]:
    """Owners whose secret the server must rebuild: survivors, and dropouts with a live mate."""
    u3 = set(state.u3)
    return [u for u in state.u2
            if u in u3 or any(v in u3 for v in state.graph[u])]


def _check_holders(state: ServerState, stage: str, owners: Sequence[str],
                   live: Sequence[str]) -> None:
    live_set = set(live)
    for u in owners:
        got = sum(v in live_set for v in state.graph[u])
        if got < state.threshold:
            raise SecAggAbort(state.round, stage, f"client {u} has too few live neighbours "
                              "holding its shares", state.threshold, got)


def close_advertise(state: ServerState) -> tuple[ServerState, dict[str, Neighbours]]:
    """End stage 0: draw the graph over the clients that advertised; send each its neighbours."""
    u1, cfg = tuple(sorted(state.keys)), state.config
    n = len(u1)
    if n < 2:
        raise SecAggAbort(state.round, STAGES[0], f"{n} of {len(state.sampled)} clients "
                          "advertised keys", 2, n)
    k = n - 1 if cfg.complete else min(cfg.degree or degree_for(n), n - 1)
    graph = harary(u1, k, frng.rng(cfg.seed, "secagg-graph", state.round))
    k = len(graph[u1[0]])
    t = cfg.threshold or threshold_for(k)
    if t > k:
        raise SecAggAbort(state.round, STAGES[0], f"threshold {t} exceeds the {k} neighbours "
                          f"left with {n} clients", t, k)
    new = replace(state, stage=STAGES[1], degree=k, threshold=t, graph=graph)
    if n < new.min_survivors:
        raise SecAggAbort(state.round, STAGES[0], f"{n} of {len(state.sampled)} clients "
                          "advertised keys", new.min_survivors, n)
    out = {c: Neighbours(state.round, c, t, tuple(
        PeerKeys(v, state.keys[v].enc_pk, state.keys[v].mask_pk) for v in graph[c]))
        for c in u1}
    return new, out


def close_share_keys(state: ServerState) -> tuple[ServerState, dict[str, ShareInbox]]:
    """End stage 1: route each sealed share to its receiver."""
    u2 = tuple(sorted(state.sealed))
    if len(u2) < state.min_survivors:
        raise SecAggAbort(state.round, STAGES[1], f"{len(u2)} clients shared keys",
                          state.min_survivors, len(u2))
    _check_holders(state, STAGES[1], u2, u2)
    inbox: dict[str, list[tuple[str, bytes]]] = {v: [] for v in u2}
    for sender in u2:
        for receiver, ct in state.sealed[sender].items():
            if receiver in inbox:
                inbox[receiver].append((sender, ct))
    new = replace(state, stage=STAGES[2], u2=u2, sealed={})
    return new, {v: ShareInbox(state.round, v, tuple(inbox[v])) for v in u2}


def close_masked_input(state: ServerState) -> tuple[ServerState, dict[str, UnmaskRequest]]:
    """End stage 2: tell each survivor which of its neighbours survived and which dropped."""
    u3 = tuple(sorted(state.u3))
    if len(u3) < state.min_survivors:
        raise SecAggAbort(state.round, STAGES[2], f"{len(u3)} clients sent masked inputs",
                          state.min_survivors, len(u3))
    new = replace(state, stage=STAGES[3], u3=u3)
    _check_holders(new, STAGES[2], _needed(new), u3)
    out = {}
    for v in u3:
        alive, gone = _split_neighbours(new, v)
        out[v] = UnmaskRequest(state.round, v, tuple(alive), tuple(gone))
    return new, out


def close_unmask(state: ServerState) -> tuple[ServerState, Aggregate]:
    """End stage 3: rebuild the secrets, strip the masks, return the exact field sum."""
    u4 = set(state.revealed)
    _check_holders(state, STAGES[3], _needed(state), sorted(u4))
    spec, t, r = state.config.field, state.threshold, state.round
    b_sh: dict[str, list[shamir.Share]] = {}
    s_sh: dict[str, list[shamir.Share]] = {}
    for v in sorted(u4):
        msg = state.revealed[v]
        for into, pairs in ((b_sh, msg.self_mask), (s_sh, msg.mask_key)):
            for owner, raw in pairs:
                try:
                    into.setdefault(owner, []).append(shamir.share_from_bytes(raw))
                except ValueError as e:
                    raise SecAggError(f"secagg: bad share of {owner} from {v}: {e}") from e
    assert state.masked_sum is not None  # close_masked_input checked there are inputs
    total = state.masked_sum.copy()
    u3 = set(state.u3)
    for u in _needed(state):
        if u in u3:
            seed = _secret_bytes(shamir.reconstruct(b_sh[u], t), u, "self-mask seed")
            total -= crypto.prg(seed, total.size, spec.dtype)
        else:
            sk = _secret_bytes(shamir.reconstruct(s_sh[u], t), u, "mask key")
            if crypto.public_key(sk) != state.keys[u].mask_pk:
                raise SecAggError(f"secagg: rebuilt mask key of {u} does not match its "
                                  "public key (inconsistent shares)")
            sk_u = crypto.private_key(sk)
            for v in state.graph[u]:
                if v in u3:
                    pm = crypto.prg(_pair_seed(sk_u, state.keys[v].mask_pk, r, u, v),
                                    total.size, spec.dtype)
                    # v added sign(v, u) * pm; take it back out
                    total = total - pm if _sign(v, u) > 0 else total + pm
    new = replace(state, stage="done", masked_sum=None, revealed={})
    return new, Aggregate(r, total, state.u3, state.degree, t)


def _secret_bytes(value: int, owner: str, what: str) -> bytes:
    if value >= 2**256:
        raise SecAggError(f"secagg: rebuilt {what} of {owner} is out of range "
                          "(inconsistent shares)")
    return value.to_bytes(32, "big")
