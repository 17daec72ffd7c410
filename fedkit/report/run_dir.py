"""A run directory: what a finished (or interrupted) experiment leaves behind.

Files: ``scenario.yaml`` (resolved), ``model.json`` (how to rebuild the model), ``metrics.jsonl``
(a row per round), ``clients.jsonl`` (a row per client task), ``checkpoint.npz`` (after every
round, written atomically), ``params.npz``, ``summary.json``, ``curves.png``; split learning adds
``server_params.npz`` (the server part; ``params.npz`` holds the client part).

Crash consistency. The checkpoint is the commit point of a round: it is written first (atomically,
by rename) and carries the round's metrics and client rows; the JSONL files are appended after it.
A crash at any instant therefore leaves a checkpoint at round r and logs at r or r-1 (or a torn
last line); :meth:`RunDir.repair` makes the logs agree with the checkpoint before a resume (drops
what goes past it, re-appends the rows the crash lost), so a resumed run never repeats or loses
a round. Nothing already committed is lost when a later step fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


def _cleaned(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _cleaned(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_cleaned(v) for v in obj]
    return _clean(obj)


@dataclass(frozen=True)
class Checkpoint:
    round: int
    params: Params
    sections: dict[str, dict[str, np.ndarray]]
    rows: dict[str, Any] | None  # the committed round's log rows


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)
        f.flush()


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in rows)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a crash mid-append) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


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


RESULT_FILES = ("metrics.jsonl", "clients.jsonl", "checkpoint.npz", "summary.json", "server_params.npz")


class RunDirExists(FileExistsError):
    """A run directory already holds results; they are never replaced by accident."""


def holds_run(path: str | Path) -> bool:
    return any((Path(path) / f).exists() for f in RESULT_FILES)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def scenario_changes(old_text: str, new_text: str) -> list[str]:
    """Dotted keys whose values differ between two scenario files, except ``rounds``: a
    resume may extend a run (unless a cosine schedule makes every round's lr depend on it)."""
    import yaml

    a, b = _flat(yaml.safe_load(old_text) or {}), _flat(yaml.safe_load(new_text) or {})
    changed = {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}
    if "cosine" not in (a.get("train.schedule.kind"), b.get("train.schedule.kind")):
        changed.discard("rounds")
    return sorted(changed)


def check_can_start(
    path: str | Path, resume: bool, overwrite: bool, scenario: str | None = None, force: bool = False
) -> None:
    """Refuse to start where results would be lost or mixed: resuming without a checkpoint,
    writing over a run without ``overwrite``, or resuming with a scenario other than the run's
    (``scenario``: the new file's text) unless ``force``."""
    if resume and not (Path(path) / "checkpoint.npz").exists():
        raise RunDirExists(f"{path}: no checkpoint.npz to resume from")
    kept = Path(path) / "scenario.yaml"
    if resume and scenario is not None and not force and kept.exists():
        changed = scenario_changes(kept.read_text(), scenario)
        if changed:
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise RunDirExists(
                f"{path}: the scenario differs from the run's ({shown}); resume with the run's own "
                f"{kept}, or pass --force to continue with the changed scenario"
            )
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
        """The run's scenario. A resumed run keeps its original file; a changed scenario
        (forced) goes beside it as ``scenario.resumed-<round>.yaml``."""
        kept = self.path / "scenario.yaml"
        if kept.exists() and kept.read_text() != text and holds_run(self.path):
            rows = self.metrics()
            done = rows[-1]["round"] if rows else 0
            _atomic_write(self.path / f"scenario.resumed-{done}.yaml", text.encode())
            return
        _atomic_write(kept, text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        _atomic_write(self.path / name, (json.dumps(obj, indent=2) + "\n").encode())

    def append_rows(self, row: Mapping[str, Any], clients: Sequence[Mapping[str, Any]] = ()) -> None:
        """The round's metrics row and its client rows (after its checkpoint was committed)."""
        if clients:
            _append(self.path / "clients.jsonl", _jsonl(clients))
        _append(self.path / "metrics.jsonl", _jsonl([row]))

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def write_checkpoint(
        self,
        round_: int,
        params: Params,
        sections: Mapping[str, Mapping[str, np.ndarray]],
        rows: Mapping[str, Any] | None = None,
    ) -> None:
        """Params plus named sections of arrays (aggregator state, downlink state, ...) and the
        round's log rows (``{"metrics": row, "clients": [...]}``), committed together."""
        extra = {f"{sec}/{k}": v for sec, arrays in sections.items() for k, v in arrays.items()}
        extra["round"] = np.array(round_)
        if rows is not None:
            extra["rows"] = np.frombuffer(json.dumps(_cleaned(rows)).encode(), dtype=np.uint8)
        save_params(self.path / "checkpoint.npz", params, extra)

    def read_checkpoint(self) -> Checkpoint | None:
        path = self.path / "checkpoint.npz"
        if not path.exists():
            return None
        params, extra = load_params(path)
        sections: dict[str, dict[str, np.ndarray]] = {}
        for k, v in extra.items():
            sec, sep, rest = k.partition("/")
            if sep:
                sections.setdefault(sec, {})[rest] = v
        rows = json.loads(extra["rows"].tobytes().decode()) if "rows" in extra else None
        return Checkpoint(int(extra["round"]), params, sections, rows)

    def repair(self) -> int:
        """Make the logs agree with the checkpoint (see the module docstring); returns its round."""
        ck = self.read_checkpoint()
        done = 0 if ck is None else ck.round
        metrics = [r for r in _read_jsonl(self.path / "metrics.jsonl") if r.get("round", 0) <= done]
        clients = [r for r in _read_jsonl(self.path / "clients.jsonl") if r.get("round", 0) <= done]
        if ck is not None and ck.rows is not None and (not metrics or metrics[-1]["round"] < done):
            metrics.append(ck.rows["metrics"])
            clients = [r for r in clients if r.get("round") != done] + list(ck.rows["clients"])
        _atomic_write(self.path / "metrics.jsonl", _jsonl(metrics).encode())
        _atomic_write(self.path / "clients.jsonl", _jsonl(clients).encode())
        return done

    def write_final(self, params: Params, summary: Mapping[str, Any]) -> None:
        save_params(self.path / "params.npz", params)
        _atomic_write(
            self.path / "summary.json", (json.dumps(dict(summary), indent=2) + "\n").encode()
        )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return _read_jsonl(Path(path) / "metrics.jsonl")


def _ratio(rows: list[dict[str, Any]], ratio: str, nbytes: str) -> float | None:
    """Total dense bytes over total sent bytes (each row's dense = its ratio x its bytes)."""
    sent = sum(r.get(nbytes, 0) for r in rows if r.get(ratio) is not None)
    dense = sum(r[ratio] * r[nbytes] for r in rows if r.get(ratio) is not None)
    return dense / sent if sent else None


def time_to_target(rows: Sequence[Mapping[str, Any]], target_acc: float | None) -> dict[str, Any]:
    """When the run first reached ``target_acc`` (test accuracy, else federated accuracy): in
    simulated seconds (the round's ``sim_time_s``) and in rounds; None when it never did."""
    if target_acc is None:
        return {}
    hit = next(
        (r for r in rows
         if (a := r.get("test_acc", r.get("fed_acc"))) is not None and a >= target_acc),
        None,
    )
    return {
        "target_acc": target_acc,
        "time_to_target_s": None if hit is None else hit.get("sim_time_s"),
        "rounds_to_target": None if hit is None else hit["round"],
    }
def _wire(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the bytes on the wire and the compression ratios against them (dense float32
    payload over everything a TCP proxy sees), next to the payload-only ``ratio_*``."""
    out: dict[str, Any] = {}
    for d in ("down", "up"):
        key = f"wire_bytes_{d}"
        if not any(r.get(key) is not None for r in rows):
            continue
        wire = sum(r[key] for r in rows if r.get(key) is not None)
        dense = sum(r[f"ratio_{d}"] * r[f"bytes_{d}"] for r in rows
                    if r.get(f"ratio_{d}") is not None and r.get(key) is not None)
        out[f"total_{key}"] = wire
        out[f"wire_ratio_{d}"] = dense / wire if wire and dense else None
    return out


def summarize(
    rows: Iterable[dict[str, Any]], params: Params, seed: int, name: str,
    target_acc: float | None = None,
) -> dict[str, Any]:
    """The run's summary. Bytes come twice: ``total_bytes_*`` count payloads (the encoded
    updates and models), ``total_wire_bytes_*`` the whole exchange on the wire (gRPC messages,
    HTTP/2 framing, headers and metadata; TLS records excepted; estimated the same way
    in-process); ``ratio_*`` and ``wire_ratio_*`` are the dense float32 payload over each."""
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
        **_wire(rows),
        "total_encode_s": sum(r.get("encode_s", 0.0) for r in rows),
        "total_decode_s": sum(r.get("decode_s", 0.0) for r in rows),
        "total_wall_s": sum(r.get("wall_s", 0.0) for r in rows),
        "sim_time_s": rows[-1].get("sim_time_s", 0.0) if rows else 0.0,
        **time_to_target(rows, target_acc),
        "skipped_rounds": sum(1 for r in rows if r.get("status", "ok") != "ok"),
        **{  # differential privacy: the budget spent by the whole run, at the scenario's delta
            k: rows[-1][k] for k in ("dp_epsilon", "dp_delta") if rows and rows[-1].get(k) is not None
        },
        "params_sha256": params_hash(params),
        "fedkit_version": __version__,
        "seed": seed,
    }
