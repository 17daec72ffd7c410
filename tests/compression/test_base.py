import pytest

from fedkit.compression import REGISTRY, decode, make, parse_spec, spec_string
from fedkit.types import DecodeError, Encoded


def test_registry_has_every_codec() -> None:
    names = {"identity", "fp16", "bf16", "quant", "qsgd", "sign", "kmeans", "topk", "randk",
             "powersgd", "zstd"}
    assert names <= set(REGISTRY)


def test_parse_spec_literals_and_lists() -> None:
    p = parse_spec("ef: topk(ratio=1e-2, scope='global') | quant(bits=4, stochastic=true)|zstd")
    assert p.error_feedback
    assert p.stages == (
        ("topk", {"ratio": 0.01, "scope": "global"}),
        ("quant", {"bits": 4, "stochastic": True}),
        ("zstd", {}),
    )
    assert parse_spec("powersgd(rank=[4, 1,0])").stages == (("powersgd", {"rank": (4, 1, 0)}),)


@pytest.mark.parametrize(
    "spec,canonical",
    [
        ("identity", "identity"),
        ("topk", "topk(ratio=0.01)"),
        (
            "topk(ratio=0.010) | quant(bits=8, stochastic=False) | zstd",
            "topk(ratio=0.01)|quant(bits=8)|zstd(level=3)",
        ),
        ("ef:sign", "ef:sign"),
        ("identity|zstd(level=5)", "zstd(level=5)"),
        ("randk(ratio=1, scale=true)", "randk(ratio=1.0,scale=True)"),
        ("powersgd(rank=[4,1])|fp16", "powersgd(rank=[4,1])|fp16"),
        ("topk(scope=\"global\")", "topk(ratio=0.01,scope=global)"),
    ],
)
def test_canonical_spec_is_a_fixed_point(spec: str, canonical: str) -> None:
    assert make(spec).spec == canonical
    assert make(canonical).spec == canonical


def test_spec_string_from_dicts() -> None:
    s = spec_string([("topk", {"ratio": 0.01}), ("quant", {"bits": 4})], error_feedback=True)
    assert s == "ef:topk(ratio=0.01)|quant(bits=4)"
    assert spec_string(["sign", ("zstd", {"level": 1})]) == "sign|zstd(level=1)"


@pytest.mark.parametrize(
    "spec,message",
    [
        ("topc(ratio=0.1)", "did you mean 'topk'"),
        ("topk(ration=0.1)", "did you mean 'ratio'"),
        ("zstd|quant", "'zstd' must be the last stage"),
        ("topk|randk", "one sparsifier/low-rank stage"),
        ("quant|sign", "one value coder stage"),
        ("quant|topk", "'topk' .* must come before 'quant'"),
        ("quant(bits=9)", r"bits must be in 1\.\.8"),
        ("quant(bits=0)", r"bits must be in 1\.\.8"),
        ("quant(bits=2.5)", "bits must be an int"),
        ("topk(ratio=0)", r"ratio must be in \(0, 1\]"),
        ("randk(ratio=1.5)", r"ratio must be in \(0, 1\]"),
        ("topk(scope=layer)", "scope must be one of"),
        ("topk(ratio=[0.1,0.2],scope=global)", "scope='tensor'"),
        ("sign(bits=1)", "has no parameter 'bits'"),
        ("ef:ef:sign", "only allowed once"),
        ("sign|ef:quant", "only allowed once"),
        ("quant(bits=8", r"expected '\)'"),
        ("quant(bits=)", "expected a value"),
        ("quant(bits=8, bits=4)", "given twice"),
        ("quant;rm", "unexpected character"),
        ("", "non-empty"),
        ("identity|fp16|identity|quant", "one value coder"),
    ],
)
def test_bad_specs_raise_clear_value_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(spec)


def test_decode_unknown_codec_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unknown codec"):
        decode(Encoded("nope(x=1)", b""))
    with pytest.raises(DecodeError, match="cannot decode"):
        make("sign").decode(Encoded("fp16", b""))
