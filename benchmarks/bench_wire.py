"""Bytes on the wire vs payload bytes, measured by a counting TCP proxy, and what fedkit reports.

    python benchmarks/bench_wire.py [--before DIR]

Each case runs a scenario over loopback gRPC (plaintext, per-client tokens, 3 clients, 3 rounds)
with every client connected through a byte-counting TCP proxy, and compares: payload bytes
(the encoded frames), what fedkit reports as wire bytes, and what the proxy saw. Ratios are the
dense float32 payload over each. ``--before DIR`` runs the same cases against the fedkit in DIR
(e.g. an export of an older commit: ``git archive d789aa6 | tar -x -C DIR``) for a before/after
table. Writes benchmarks/results/wire.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "wire.md"
CASES = {
    "19 KB model, compressed uplink": (64, "ef:topk(ratio=0.05)|quant(bits=8)|zstd"),
    "19 KB model, identity": (64, "identity"),
    "673 KB model, compressed uplink": (2240, "ef:topk(ratio=0.05)|quant(bits=8)|zstd"),
}


class CountingProxy:
    def __init__(self, target: int) -> None:
        self.target, self.up, self.down = target, 0, 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            srv = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
            self.port = srv.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self.pipe(r, tw, "up"), self.pipe(tr, w, "down"))

    async def pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, d: str) -> None:
        try:
            while data := await r.read(1 << 16):
                setattr(self, d, getattr(self, d) + len(data))
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()


def run_case(hidden: int, uplink: str, out: str) -> dict:
    """One case in this process, against whatever fedkit is on sys.path."""
    from fedkit.experiment import run_with_link
    from fedkit.runtime.client import ClientHost
    from fedkit.scenario import validate
    from fedkit.scenario.build import build
    from fedkit.transport import GrpcServer
    from fedkit.transport.client import run_client
    from fedkit.transport.security import TokenAuth, new_token

    raw = {
        "name": "wire", "seed": 1, "rounds": 3,
        "clients": {"count": 3, "per_round": {"fraction": 1.0}},
        "data": {"dataset": {"name": "digits"}, "partition": {"name": "iid"}},
        "model": {"name": "mlp", "hidden": [hidden]},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "compression": {"uplink": uplink},
        "output": {"plot": False, "checkpoint": False},
    }
    exp = build(validate(raw))
    tokens = {c: new_token() for c in exp.clients}
    server = GrpcServer("127.0.0.1:0", insecure=True, auth=TokenAuth.from_tokens(tokens))
    proxy = CountingProxy(server.start())
    stop = threading.Event()
    threads = [threading.Thread(target=run_client, args=(f"127.0.0.1:{proxy.port}", ClientHost(c)),
                                kwargs={"name": c.id, "insecure": True, "stop": stop, "token": tokens[c.id]},
                                daemon=True) for c in exp.clients.values()]
    for t in threads:
        t.start()
    server.wait_for_clients(3, 60)
    s = run_with_link(exp.scenario, exp.plan, exp.init_params, server.link, out)
    server.shutdown_clients()
    stop.set()
    for t in threads:
        t.join(10)
    server.stop()
    return {"summary": s, "proxy_up": proxy.up, "proxy_down": proxy.down, "replies": 3 * 3}


def measure(root: Path, label: str) -> list[dict]:
    rows = []
    for name, (hidden, uplink) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, PYTHONPATH=str(root))
            out = subprocess.run([sys.executable, __file__, "--case", str(hidden), uplink, tmp], env=env,
                                 capture_output=True, text=True, cwd=tmp, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"label": label, "case": name, **r})
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| code | case | payload up / down | reported wire up / down | proxy up / down | reported vs proxy | ratio up: payload / wire | overhead per reply (up) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["summary"]
        up, down = s["total_bytes_up"], s["total_bytes_down"]
        wup, wdown = s.get("total_wire_bytes_up", 0), s.get("total_wire_bytes_down", 0)
        pup, pdown = r["proxy_up"], r["proxy_down"]
        dense_up = (s["ratio_up"] or 0) * up
        err = f"{100 * (wup - pup) / pup:+.1f}% / {100 * (wdown - pdown) / pdown:+.1f}%"
        lines.append(
            f"| {r['label']} | {r['case']} | {up:,} / {down:,} | {wup:,} / {wdown:,} | {pup:,} / {pdown:,} | {err} "
            f"| {s['ratio_up']:.1f}x / {dense_up / pup:.1f}x | {(pup - up) / r['replies']:.0f} B |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, help="a directory holding an older fedkit to compare with")
    ap.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        r = run_case(int(args.case[0]), args.case[1], args.case[2])
        print(json.dumps(r, default=str))
        return
    rows = measure(args.before, f"before ({args.before.name})") if args.before else []
    rows += measure(ROOT, "this checkout")
    lines = [
        "# Bytes on the wire (loopback gRPC, counting proxy)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        "`python benchmarks/bench_wire.py [--before DIR]` (`make bench-wire`) regenerates this file.",
        "",
        "3 clients x 3 rounds, plaintext, per-client bearer tokens, MLP on digits. *Payload* counts the "
        "encoded frames (what `bytes_*` always reported); *reported wire* is fedkit's `total_wire_bytes_*`; "
        "*proxy* is every byte a TCP relay between clients and server forwarded (HTTP/2 preface, "
        "SETTINGS, HEADERS, DATA, WINDOW_UPDATE, PING, RST_STREAM, GOAWAY: the whole exchange, the "
        "final Shutdown included). TLS would add ~22-29 B per record and the handshake per connection. "
        "Overhead per reply = (proxy up - payload up) / replies: joins, headers, framing.",
        "",
        *table(rows),
        "",
        "What changed: replies carry no metadata (the session id authenticates them), since gRPC sends "
        "custom metadata as HPACK literals on every call (client name + 43-char token = ~90 B per reply); "
        "gRPC's BDP probing is replaced by fixed 8 MiB stream windows (its PING/WINDOW_UPDATE pairs were "
        "timing-dependent bytes no estimate could follow); the server waits for a reply stream's "
        "half-close, sparing a RST_STREAM. What remains per reply is gRPC's own: "
        "a HEADERS frame (17 B once indexed), the message framing (14 B per message plus 9 B per 16 KiB), "
        "END_STREAM (9 B), two WINDOW_UPDATEs (26 B), and the server's response headers, Ack and trailers "
        "(~90 B down); the ReplyHeader itself (session id, task id, metrics: ~100-150 B). Downstream, each "
        "task repeats its config JSON (~400 B). One call per reply stays: a reply stream on the Join call "
        "would need a bidirectional Join (a protocol change, left out).",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
