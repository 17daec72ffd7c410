"""Bounds on what a remote peer may make us echo or keep: one place, used by every layer.

Why: names, codec specs, task ids and error strings in a payload are attacker-controlled; a
65,535-character codec name echoed into a status message and every log line turns one bad
reply into megabytes of logs. Whatever the server repeats back goes through :func:`shorten`,
and reply metrics pass :func:`check_metrics` (finite numbers, a bounded set of plain names).

    >>> shorten("x" * 1000, 12)
    "'xxxxxxxxxxxx'... (1000 chars)"
    >>> check_metrics({"loss": 0.25, "acc": 1})
    {'loss': 0.25, 'acc': 1.0}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

ECHO_CHARS = 120
"""Characters of one untrusted value repeated in a message or log line."""
MESSAGE_CHARS = 1000
"""Characters of one whole status message or log line built around untrusted values."""
MAX_METRICS = 64
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]{0,63}\Z")


def shorten(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the original length noted."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    cut = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{cut}... ({len(text)} chars)"


def clip(message: str, limit: int = MESSAGE_CHARS) -> str:
    """A whole message cut to ``limit`` characters (for text already built from parts)."""
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message)} chars)"


def check_metrics(metrics: Mapping[Any, Any]) -> dict[str, float]:
    """Finite float values under at most :data:`MAX_METRICS` names matching
    :data:`METRIC_NAME`; ValueError names the first offender."""
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"{len(metrics)} metrics, at most {MAX_METRICS} allowed")
    out = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not METRIC_NAME.match(k):
            raise ValueError(f"metric name {shorten(k, 40)} must match {METRIC_NAME.pattern}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"metric {k!r} must be a finite number, got {shorten(v, 40)}")
        out[k] = float(v)
    return out
