"""A run directory: what a finished (or interrupted) experiment leaves behind.

Files: ``scenario.yaml`` (resolved), ``metrics.jsonl`` (a row per round, appended and flushed),
``checkpoint.npz`` (after every round, written atomically), ``params.npz``, ``summary.json``,
``curves.png``. Nothing already written is lost when a later step fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedkit import __version__
from fedkit.compression.frame import pack_arrays
from fedkit.types import Params


def params_hash(params: Params) -> str:
    """sha256 of the parameters' wire bytes: equal hashes mean bit-identical models."""
    return hashlib.sha256(pack_arrays(params)).hexdigest()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    return v


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_params(path: Path, params: Params, extra: Mapping[str, np.ndarray] | None = None) -> None:
    import io

    buf = io.BytesIO()
    arrays = {f"p{i:04d}": a for i, a in enumerate(params)} | dict(extra or {})
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    _atomic_write(path, buf.getvalue())


def load_params(path: Path) -> tuple[Params, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as f:
        params = [f[k] for k in sorted(f.files) if k.startswith("p") and k[1:].isdigit()]
        extra = {k: f[k] for k in f.files if not (k.startswith("p") and k[1:].isdigit())}
    return params, extra


RESULT_FILES = ("metrics.jsonl", "checkpoint.npz", "summary.json")


class RunDirExists(FileExistsError):
    """A run directory already holds results; they are never replaced by accident."""


def holds_run(path: str | Path) -> bool:
    return any((Path(path) / f).exists() for f in RESULT_FILES)


def check_can_start(path: str | Path, resume: bool, overwrite: bool) -> None:
    if resume and not (Path(path) / "checkpoint.npz").exists():
        raise RunDirExists(f"{path}: no checkpoint.npz to resume from")
    if not resume and not overwrite and holds_run(path):
        raise RunDirExists(
            f"{path} already holds a run; --resume continues it, --overwrite replaces it, "
            "or choose another --out"
        )


def fresh_path(base: str | Path) -> Path:
    """``base`` if it holds no run yet, else ``base-2``, ``base-3``, ... (the first free one)."""
    base = Path(base)
    path, n = base, 1
    while holds_run(path):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunDir:
    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False):
        check_can_start(path, resume, overwrite)
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            for f in RESULT_FILES:
                (self.path / f).unlink(missing_ok=True)

    def write_scenario(self, text: str) -> None:
        _atomic_write(self.path / "scenario.yaml", text.encode())

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
            f.flush()

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def write_checkpoint(
        self, round_: int, params: Params, sections: Mapping[str, Mapping[str, np.ndarray]]
    ) -> None:
        """Params plus named sections of arrays (aggregator state, downlink state, ...)."""
        extra = {f"{sec}/{k}": v for sec, arrays in sections.items() for k, v in arrays.items()}
        save_params(self.path / "checkpoint.npz", params, extra | {"round": np.array(round_)})

    def read_checkpoint(self) -> tuple[int, Params, dict[str, dict[str, np.ndarray]]] | None:
        path = self.path / "checkpoint.npz"
        if not path.exists():
            return None
        params, extra = load_params(path)
        sections: dict[str, dict[str, np.ndarray]] = {}
        for k, v in extra.items():
            sec, sep, rest = k.partition("/")
            if sep:
                sections.setdefault(sec, {})[rest] = v
        return int(extra["round"]), params, sections

    def write_final(self, params: Params, summary: Mapping[str, Any]) -> None:
        save_params(self.path / "params.npz", params)
        _atomic_write(
            self.path / "summary.json", (json.dumps(dict(summary), indent=2) + "\n").encode()
        )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    f = Path(path) / "metrics.jsonl"
    if not f.exists():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


def _ratio(rows: list[dict[str, Any]], ratio: str, nbytes: str) -> float | None:
    """Total dense bytes over total sent bytes (each row's dense = its ratio x its bytes)."""
    sent = sum(r.get(nbytes, 0) for r in rows if r.get(ratio) is not None)
    dense = sum(r[ratio] * r[nbytes] for r in rows if r.get(ratio) is not None)
    return dense / sent if sent else None


def summarize(
    rows: Iterable[dict[str, Any]], params: Params, seed: int, name: str
) -> dict[str, Any]:
    rows = list(rows)
    accs = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    down = sum(r.get("bytes_down", 0) for r in rows)
    up = sum(r.get("bytes_up", 0) for r in rows)
    return {
        "name": name,
        "rounds": len(rows),
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "final_loss": next((r["test_loss"] for r in reversed(rows) if r.get("test_loss") is not None), None),
        "total_bytes_down": down,
        "total_bytes_up": up,
        "ratio_down": _ratio(rows, "ratio_down", "bytes_down"),
        "ratio_up": _ratio(rows, "ratio_up", "bytes_up"),
        **{
            f"total_{k}": sum(r[k] for r in rows if r.get(k) is not None)
            for k in ("wire_bytes_down", "wire_bytes_up")
            if any(r.get(k) is not None for r in rows)
        },
        "total_encode_s": sum(r.get("encode_s", 0.0) for r in rows),
        "total_decode_s": sum(r.get("decode_s", 0.0) for r in rows),
        "total_wall_s": sum(r.get("wall_s", 0.0) for r in rows),
        "skipped_rounds": sum(1 for r in rows if r.get("status", "ok") != "ok"),
        "params_sha256": params_hash(params),
        "fedkit_version": __version__,
        "seed": seed,
    }
