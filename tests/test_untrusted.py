import math

import pytest

from fedkit.untrusted import MAX_METRICS, check_metrics, clip, shorten


def test_shorten_keeps_short_text_and_cuts_long_text_with_its_length() -> None:
    assert shorten("topk") == "'topk'"
    out = shorten("x" * 65_535)
    assert len(out) < 150 and out.endswith("(65535 chars)")
    assert shorten(12345, 3) == "123... (5 chars)"
    assert clip("a" * 10, 4) == "aaaa... (10 chars)" and clip("ok") == "ok"


def test_check_metrics_accepts_plain_finite_numbers_only() -> None:
    assert check_metrics({"loss": 1, "eval/acc": 0.5}) == {"loss": 1.0, "eval/acc": 0.5}
    for bad, msg in [
        ({"loss": math.inf}, "finite"),
        ({"loss": True}, "finite"),
        ({"has space": 1.0}, "must match"),
        ({"x" * 65: 1.0}, "must match"),
        ({f"m{i}": 0.0 for i in range(MAX_METRICS + 1)}, "at most"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_metrics(bad)
