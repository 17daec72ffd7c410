"""gRPC transport benchmark over loopback: bandwidth, fleet size, per-round overhead.

    python benchmarks/bench_grpc.py [--mb 100] [--fleet 1000] [--big-mb 300] [--quick]

(a) a model of ``--mb`` MB (identity codec) goes server -> client -> server, each side
    serialising and deserialising the arrays; reported per direction and round trip, plaintext
    and TLS. ``--big-mb`` repeats it once with a larger model.
(b) ``--fleet`` light clients (grpc.aio stubs in a separate load-generator process, one TCP
    connection each) stay connected; the server's RSS is read from /proc; rounds sample 100.
(c) 10 client processes with a tiny model: per-round time of ``link.exchange`` beyond the
    slowest client's compute.

Writes benchmarks/results/grpc.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedkit.compression.frame import pack_arrays, unpack_arrays  # noqa: E402
from fedkit.runtime.link import gather  # noqa: E402
from fedkit.transport import ClientTls, GrpcServer, ServerTls, make_certs  # noqa: E402
from fedkit.types import Encoded, Reply, Task  # noqa: E402

MB = 1e6
RESULTS = ROOT / "benchmarks" / "results" / "grpc.md"


def exchange(link, tasks: dict[str, Task], deadline_s: float) -> list[Reply]:
    """Send the tasks, wait for their replies until the deadline (the engine's own send/arrivals)."""
    return [a.reply for a in gather(link, list(tasks.values()), link.now() + deadline_s) if a.reply]


def rss_mb(pid: int | None = None) -> float:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spawn(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, __file__, *args], env=env, text=True,
                            stdout=subprocess.PIPE)


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---- client processes ----------------------------------------------------------------------


def echo_client(port: int, name: str, tls_dir: str | None, compute_s: float, mode: str) -> None:
    """A real run_client that sends the params back; ``mode="e2e"`` unpacks and repacks them."""
    from fedkit.transport import run_client

    def fn(task: Task) -> Reply:
        if mode == "e2e":
            params = unpack_arrays(task.params.data)  # deserialise (views the received bytes)
        t_recv = time.time()
        t0 = time.perf_counter()
        if compute_s:
            time.sleep(compute_s)
        compute = time.perf_counter() - t0
        t_send = time.time()
        update = Encoded("identity", pack_arrays(params)) if mode == "e2e" else task.params
        return Reply(task_id=task.task_id, client=task.client, round=task.round, update=update,
                     num_examples=1,
                     metrics={"t_recv": t_recv, "t_send": t_send, "compute": compute})

    tls = None
    host = "127.0.0.1"
    if tls_dir:
        tls = ClientTls.from_files(Path(tls_dir) / "ca.pem")
        host = "localhost"
    run_client(f"{host}:{port}", fn, name=name, tls=tls, insecure=tls is None,
               max_message_bytes=64 << 20)


async def light_fleet(port: int, n: int) -> None:
    """n light clients on grpc.aio stubs in this one process, one connection each."""
    import grpc

    from fedkit.transport._proto import fedkit_pb2 as pb
    from fedkit.transport._proto import fedkit_pb2_grpc as pb_grpc
    from fedkit.transport.security import client_metadata
    from fedkit.transport.serde import Reassembler, reply_chunks

    async def one(i: int) -> None:
        name = f"light-{i:05d}"
        md = client_metadata(name, None)
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            stub = pb_grpc.FedKitStub(ch)
            session, r = "", None
            async for msg in stub.Join(pb.JoinRequest(name=name), metadata=md):
                kind = msg.WhichOneof("body")
                if kind == "welcome":
                    session = msg.welcome.session_id
                elif kind == "task":
                    r = r or Reassembler()
                    if r.feed(msg.task):
                        h, params = r.header, r.encoded()
                        r = None
                        reply = Reply(task_id=h.task_id, client=name, round=h.round,
                                      num_examples=1, update=params)
                        await stub.PushReply(reply_chunks(reply, session_id=session), metadata=md)
                elif kind == "shutdown":
                    return

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = [e for e in results if isinstance(e, BaseException)]
    if errors:
        print(f"{len(errors)} light clients failed, e.g. {errors[0]!r}", file=sys.stderr)


# ---- sections ------------------------------------------------------------------------------


def bandwidth(mb: float, rounds: int, tls: bool, mode: str) -> dict[str, float]:
    """Median MB/s of ``rounds`` echoes. ``mode="e2e"`` includes pack/unpack of the arrays on
    both sides; ``"transport"`` times Encoded in -> Encoded out (chunk, send, reassemble)."""
    n = int(mb * MB / 4)
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        kw: dict = {"insecure": True}
        if tls:
            c = make_certs(tmp, clients=())
            kw = {"tls": ServerTls.from_files(c["server_cert"], c["server_key"])}
        srv = GrpcServer(max_message_bytes=64 << 20, **kw)
        port = srv.start()
        try:
            procs.append(spawn(["--echo", str(port), "bw", tmp if tls else "", "0", mode]))
            srv.wait_for_clients(1, 60)
            down, up, rt = [], [], []
            for rnd in range(rounds):
                arrays = [np.full(n, rnd, np.float32)]
                t0 = time.time()
                params = Encoded("identity", pack_arrays(arrays))  # serialise
                if mode == "transport":
                    t0 = time.time()
                (reply,) = exchange(
                    srv.link, {"bw": Task(round=rnd, client="bw", kind="train", params=params)}, 120
                )
                t1 = time.time()
                (back,) = unpack_arrays(reply.update.data)  # deserialise
                if mode == "e2e":
                    t1 = time.time()
                assert back.shape == (n,) and back[0] == rnd
                size = params.nbytes / MB
                down.append(size / (reply.metrics["t_recv"] - t0))
                up.append(size / (t1 - reply.metrics["t_send"]))
                rt.append(2 * size / (t1 - t0 - reply.metrics["compute"]))
                del arrays, params, reply, back
            srv.shutdown_clients()
        finally:
            srv.stop()
            stop_all(procs)
    return {"down": statistics.median(down), "up": statistics.median(up),
            "rt": statistics.median(rt), "size": n * 4 / MB}


def fleet(n: int, sample: int, rounds: int) -> dict[str, float]:
    srv = GrpcServer(insecure=True, heartbeat_s=10.0)
    port = srv.start()
    base = rss_mb()
    procs = [spawn(["--fleet-gen", str(port), str(n)])]
    try:
        t0 = time.perf_counter()
        srv.wait_for_clients(n, 120)
        connect = time.perf_counter() - t0
        time.sleep(1.0)
        connected = rss_mb()
        names = srv.link.clients()
        rng = np.random.default_rng(0)
        params = Encoded("identity", pack_arrays([np.zeros(1000, np.float32)]))
        lat = []
        for rnd in range(rounds):
            chosen = rng.choice(len(names), size=sample, replace=False)
            tasks = {names[i]: Task(round=rnd, client=names[i], kind="train", params=params)
                     for i in sorted(chosen)}
            t0 = time.perf_counter()
            replies = exchange(srv.link, tasks, 60)
            lat.append(time.perf_counter() - t0)
            assert len(replies) == sample, f"{len(replies)} of {sample} replied"
        after = rss_mb()
        gen_rss = rss_mb(procs[0].pid)
        srv.shutdown_clients(timeout=20)
    finally:
        srv.stop()
        stop_all(procs)
    return {"n": n, "connect_s": connect, "base": base, "connected": connected, "after": after,
            "gen": gen_rss, "p50": statistics.median(lat) * 1e3, "max": max(lat) * 1e3,
            "sample": sample, "rounds": rounds}


def overhead(clients: int, rounds: int, compute_s: float) -> dict[str, float]:
    srv = GrpcServer(insecure=True)
    port = srv.start()
    procs = [spawn(["--echo", str(port), f"p{i}", "", str(compute_s), "e2e"])
             for i in range(clients)]
    try:
        names = srv.wait_for_clients(clients, 60)
        params = Encoded("identity", pack_arrays([np.zeros(100, np.float32)]))
        over, total = [], []
        for rnd in range(rounds + 2):
            tasks = {c: Task(round=rnd, client=c, kind="train", params=params) for c in names}
            t0 = time.perf_counter()
            replies = exchange(srv.link, tasks, 30)
            dt = time.perf_counter() - t0
            assert len(replies) == clients
            if rnd >= 2:  # warm-up rounds excluded
                total.append(dt * 1e3)
                over.append((dt - max(r.metrics["compute"] for r in replies)) * 1e3)
        srv.shutdown_clients()
    finally:
        srv.stop()
        stop_all(procs)
    return {"clients": clients, "p50": statistics.median(over), "max": max(over),
            "total": statistics.median(total), "compute": compute_s * 1e3, "rounds": rounds}


# ---- report --------------------------------------------------------------------------------


def table(bw: list[tuple[str, dict]], fl: dict, ov: dict) -> str:
    rows = [
        "# gRPC transport benchmark (loopback)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; server in-process (grpc.aio thread), clients in other "
        "processes. `python benchmarks/bench_grpc.py` regenerates this file.",
        "",
        "| benchmark | result | target |",
        "|---|---|---|",
    ]
    for label, r in bw:
        rows.append(
            f"| {r['size']:.0f} MB model, {label}: server -> client / client -> server / "
            f"round trip | {r['down']:.0f} / {r['up']:.0f} / {r['rt']:.0f} MB/s | >= 300 MB/s |"
        )
    rows += [
        f"| {fl['n']} light clients connected (one TCP connection each): time to connect | "
        f"{fl['connect_s']:.1f} s | |",
        f"| server RSS: idle -> {fl['n']} connected -> after rounds | {fl['base']:.0f} -> "
        f"{fl['connected']:.0f} -> {fl['after']:.0f} MB "
        f"({(fl['connected'] - fl['base']) * 1024 / fl['n']:.0f} KB per client) | bounded |",
        f"| load generator RSS ({fl['n']} grpc.aio clients, one process) | {fl['gen']:.0f} MB | |",
        f"| round sampling {fl['sample']} of {fl['n']}, 4 KB model: exchange latency "
        f"p50 / max over {fl['rounds']} rounds | {fl['p50']:.0f} / {fl['max']:.0f} ms | |",
        f"| {ov['clients']} client processes, tiny model, {ov['compute']:.0f} ms compute: "
        f"exchange time beyond compute p50 / max over {ov['rounds']} rounds | "
        f"{ov['p50']:.1f} / {ov['max']:.1f} ms | <= 50 ms |",
    ]
    rows += [
        "",
        "Notes: on a shared 2-CPU VM these rates vary by up to 2x between runs (earlier runs: "
        "transport only 300-500 MB/s, end to end 230-340 MB/s); compare runs on one machine. "
        "End to end adds packing and unpacking the arrays (one copy each way) and page faults on fresh 100 MB buffers; transport only is the gRPC path itself. "
        "TLS runs over the same loopback with a P-256 certificate from `make_certs`.",
    ]
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--big-mb", type=float, default=300)
    ap.add_argument("--fleet", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--echo", nargs=5, metavar=("PORT", "NAME", "TLS_DIR", "COMPUTE_S", "MODE"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--fleet-gen", dest="fleet_gen", nargs=2, metavar=("PORT", "N"),
                    help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.echo:
        port, name, tls_dir, compute, mode = args.echo
        echo_client(int(port), name, tls_dir or None, float(compute), mode)
        return
    if args.fleet_gen:
        asyncio.run(light_fleet(int(args.fleet_gen[0]), int(args.fleet_gen[1])))
        return
    if args.quick:
        args.mb, args.big_mb, args.fleet = 10, 0, 50
    fl = fleet(args.fleet, min(100, args.fleet), 5)
    e2e = "end to end (pack arrays, chunk, send, reassemble, unpack)"
    transport = "transport only (Encoded in -> Encoded out)"
    bw = [(f"plaintext, {transport}", bandwidth(args.mb, 5, tls=False, mode="transport")),
          (f"plaintext, {e2e}", bandwidth(args.mb, 5, tls=False, mode="e2e")),
          (f"TLS, {transport}", bandwidth(args.mb, 5, tls=True, mode="transport"))]
    if args.big_mb:
        bw.append((f"plaintext, {transport}", bandwidth(args.big_mb, 3, tls=False,
                                                       mode="transport")))
    ov = overhead(10, 20, 0.02)
    md = table(bw, fl, ov)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
