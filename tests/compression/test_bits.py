import numpy as np
import pytest

from fedkit.compression.bits import (
    Reader,
    decode_varints,
    encode_varints,
    pack_bits,
    packed_nbytes,
    unpack_bits,
    varint,
)
from fedkit.types import DecodeError


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_pack_bits_roundtrip_and_size(bits: int, n: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 1 << bits, n).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.size == packed_nbytes(n, bits)
    assert packed.size <= -(-n * bits // 8) + 2  # b bits per code, at most 2 bytes of padding
    np.testing.assert_array_equal(unpack_bits(packed, n, bits), codes)


def test_unpack_bits_rejects_wrong_length() -> None:
    with pytest.raises(DecodeError):
        unpack_bits(np.zeros(3, np.uint8), 100, 3)


def test_varints_roundtrip_vectorized_and_scalar() -> None:
    v = np.array([0, 1, 127, 128, 300, 16383, 16384, 2**28, 2**35 - 1], dtype=np.uint64)
    enc = encode_varints(v)
    assert enc.size == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 5 + 5
    np.testing.assert_array_equal(decode_varints(enc, v.size), v)
    for x in [0, 1, 127, 128, 2**40]:
        assert Reader(varint(x)).varint("x") == x
        if x < 2**35:
            assert bytes(encode_varints(np.array([x]))) == varint(x)


@pytest.mark.parametrize(
    "buf,count",
    [(b"\x80", 1), (b"\x01\x02", 1), (b"\x01", 2), (b"\x80\x80\x80\x80\x80\x01", 1), (b"\x05", 0)],
)
def test_decode_varints_rejects_malformed(buf: bytes, count: int) -> None:
    with pytest.raises(DecodeError):
        decode_varints(np.frombuffer(buf, np.uint8), count)


def test_reader_bounds() -> None:
    r = Reader(b"\x01\x02\x03")
    assert r.u8("a") == 1
    with pytest.raises(DecodeError, match="truncated"):
        r.array(np.float32, 1, "f")
    with pytest.raises(DecodeError, match="trailing"):
        r.end()
