"""The ``fedkit`` command."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedkit.runtime.server import RunFailed
from fedkit.scenario import ScenarioError, load
from fedkit.scenario.check import DataError

EXIT_INVALID = 2
console = Console(stderr=True)
out = Console()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedkit.experiment import run_scenario
    from fedkit.report.run_dir import fresh_path

    if args.engine == "flower" and (args.mode != "inprocess" or args.resume):
        print("fedkit: --engine flower runs in-process only, without --resume", file=sys.stderr)
        return EXIT_INVALID
    if args.engine == "flower" and importlib.util.find_spec("flwr") is None:
        print("fedkit: --engine flower needs Flower: pip install 'fedkit[flower]'", file=sys.stderr)
        return EXIT_INVALID
    executor = [f"execution.kind={args.executor}"] if args.executor else []
    scenario = load(args.scenario, [*args.set, *executor])
    default = Path(scenario.output.dir) / scenario.name
    run_dir = Path(args.out) if args.out else (default if args.resume else fresh_path(default))
    totals = {"bytes": 0}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet or not console.is_terminal,  # pipes get plain lines below
    ) as progress:
        task = progress.add_task(scenario.name, total=scenario.rounds, info="")

        def on_round(row: Mapping[str, Any]) -> None:
            totals["bytes"] += row.get("bytes_up", 0) + row.get("bytes_down", 0)
            acc, loss = row.get("test_acc"), row.get("train_loss")
            info = " ".join(
                s
                for s in (
                    f"acc {acc:.3f}" if acc is not None else "",
                    f"loss {loss:.3f}" if loss is not None else "",
                    _fmt_bytes(totals["bytes"]),
                    "" if row.get("status") == "ok" else f"[yellow]{row.get('status')}",
                )
                if s
            )
            progress.update(task, completed=row["round"], info=info)
            if not console.is_terminal and not args.quiet:  # a file or a pipe: one line a round
                console.print(f"{scenario.name}: round {row['round']}/{scenario.rounds} {info}",
                              soft_wrap=True, highlight=False)

        summary = run_scenario(
            scenario, run_dir, mode=args.mode, on_round=on_round, resume=args.resume,
            overwrite=args.overwrite, workers=args.workers, force=args.force, engine=args.engine,
        )
    acc = summary["final_accuracy"]
    out.print(
        f"{scenario.name}: final accuracy {acc if acc is None else f'{acc:.4f}'}, "
        f"best {summary['best_accuracy'] and round(summary['best_accuracy'], 4)}, "
        f"{_fmt_bytes(summary['total_bytes_up'])} up, {_fmt_bytes(summary['total_bytes_down'])} down"
        f"{_on_the_wire(summary)}{_split_channel(summary)}, {summary['total_wall_s']:.2f} s  -> {run_dir}",
        soft_wrap=True,
    )
    return 0


def _split_channel(summary: dict[str, Any]) -> str:
    """ ", split channel U up, D down": split learning's activations, gradients and labels, which
    the model bytes before it leave out (an SL run's largest traffic)."""
    kinds = ("activations", "gradients", "labels")
    up = sum(summary.get(f"total_bytes_{k}_up", 0) for k in kinds)
    down = sum(summary.get(f"total_bytes_{k}_down", 0) for k in kinds)
    if not up and not down:
        return ""
    return f", split channel {_fmt_bytes(up)} up, {_fmt_bytes(down)} down"


def _on_the_wire(summary: dict[str, Any]) -> str:
    """ " (wire: U up, D down)": the whole exchange, next to the payload bytes."""
    up, down = summary.get("total_wire_bytes_up"), summary.get("total_wire_bytes_down")
    if up is None or down is None:
        return ""
    return f" (on the wire {_fmt_bytes(up)} up, {_fmt_bytes(down)} down)"


def cmd_pretrain(args: argparse.Namespace) -> int:
    import torch

    from fedkit.models.checkpoint import CheckpointError
    from fedkit.pretrain import pretrain

    s = load(args.scenario, args.set)
    torch.set_num_threads(args.threads)
    try:
        path, metrics = pretrain(s, args.out, force=args.force)
    except CheckpointError as e:
        print(f"fedkit: model.checkpoint: {e}", file=sys.stderr)
        return EXIT_INVALID
    before, after = metrics["before"], metrics["after"]
    keys = [k for k in ("accuracy", "loss", "perplexity") if k in after]
    out.print(" ".join(f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in keys), markup=False)
    out.print(f"checkpoint: {path}", markup=False)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fedkit.scenario.check import check_data

    bad = 0
    for path in args.scenarios:
        try:
            s = load(path, args.set)
        except ScenarioError as e:
            bad += 1
            print(e, file=sys.stderr)
            continue
        problems = [] if args.schema_only else check_data(s)
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        bad += bool(problems)
        if not problems:
            out.print(f"{path}: ok")
    return EXIT_INVALID if bad else 0


def cmd_describe(args: argparse.Namespace) -> int:
    from fedkit.data import describe
    from fedkit.data.text import token_counts
    from fedkit.scenario.build import client_names, load_data

    s = load(args.scenario, args.set)
    ds, parts = load_data(s)
    st = describe(parts, ds.partition_labels, ds.partition_classes)
    tokens = None if ds.text is None else token_counts(parts, ds.x_train, ds.text.pad_id)
    part = ", ".join(f"{k}={v}" for k, v in s.data.partition.items() if k != "name")
    table = Table(title=f"{s.name}: {ds.name}, {s.data.partition['name']} partition {part}".rstrip())
    table.add_column("client")
    table.add_column("samples", justify="right")
    if tokens is not None:
        table.add_column("tokens", justify="right")
    table.add_column("labels" if ds.y_train.ndim == 1 else "groups", justify="right")
    table.add_column("TV to global", justify="right")
    table.add_column(f"samples per {'label' if ds.y_train.ndim == 1 else 'group'} 0..{st.num_classes - 1}")
    for i, (name, row) in enumerate(zip(client_names(len(parts)), st.to_table_rows(), strict=True)):
        table.add_row(
            name, str(row["samples"]), *([] if tokens is None else [str(tokens[i])]), str(row["labels"]),
            f"{row['tv']:.2f}", " ".join(f"{c:>3}" for c in row["histogram"]),
        )
    out.print(table)
    summary = Table(title="summary", show_header=False)
    for key, value in st.summary().items():
        summary.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    if tokens is not None and ds.text is not None:
        summary.add_row("tokens_min / mean / max", f"{tokens.min()} / {tokens.mean():.1f} / {tokens.max()}")
        summary.add_row("tokenizer", f"{ds.text.tokenizer} (vocab {ds.text.vocab_size}, pad {ds.text.pad_id})")
    out.print(summary)
    _describe_devices(s)
    _describe_peft(s, ds)
    if s.split is not None:
        _describe_cuts(s, ds)
    if s.privacy.dp is not None:  # the budget the full run will spend, before running it
        from fedkit.scenario.privacy import describe_dp

        dp = Table(title="differential privacy", show_header=False)
        for what, text in describe_dp(s):
            dp.add_row(what, text)
        out.print(dp)
    return 0


def _describe_peft(s: Any, ds: Any) -> None:
    """A fine-tuning scenario: trainable vs total parameters, bytes per client per round."""
    from fedkit.scenario.peft import model_spec, uses_peft

    if not uses_peft(s):
        return
    from fedkit.peft.describe import summary
    from fedkit.peft.model import build

    spec = model_spec(s, ds.input_shape, ds.num_classes)
    module = build(ds.input_shape, ds.num_classes, spec["base"], spec.get("peft"), s.seed)
    method = "full fine-tuning" if s.peft is None else f"{s.peft.method}, aggregation {s.peft.aggregation}"
    table = Table(title=f"fine-tuning ({method})", show_header=False)
    for key, value in summary(module, None if s.peft is None else s.peft.aggregation).items():
        table.add_row(key, _fmt_bytes(value) if key.startswith(("bytes", "full")) else
                      f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)


def _describe_devices(s: Any) -> None:
    """The device population of a scenario with ``devices:`` (fedkit.sim.devices.summarize)."""
    if s.devices is None:
        return
    from fedkit.scenario.build import build_server
    from fedkit.scenario.simulation import describe_devices

    _, params = build_server(s)
    table = Table(title="devices (task: model down, local work, update up)", show_header=False)
    for key, value in (describe_devices(s, params) or {}).items():
        table.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    out.print(table)


def _describe_cuts(s: Any, ds: Any) -> None:
    """A split scenario: every valid cut of its model, so a user can pick one (fedkit/split/describe.py)."""
    from fedkit.models import build_model
    from fedkit.split.describe import cut_table, format_cut_table

    assert s.split is not None
    rows = cut_table(build_model(s.model, ds.input_shape, ds.num_classes), ds.input_shape, ds.num_classes)
    say: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}
    out.print(f"\nvalid cuts of model {s.model['name']!r} (input {'x'.join(map(str, ds.input_shape))}):", **say)
    out.print(format_cut_table(rows), **say)
    line = f"this scenario: {s.split.scheme} at cut {', '.join(s.split.cut_list)}"
    first = next((r for r in rows if r.name == s.split.cut_list[0]), None)
    if s.split.bottleneck is not None and first is not None:  # the encoder shrinks the first dim
        wire = (s.split.bottleneck.dim, *first.activation_shape[1:])
        line += f", bottleneck dim {wire[0]}: {'x'.join(map(str, wire))} ({4 * math.prod(wire)} B/sample) on the wire"
    out.print(line, **say)
    if len(s.split.cut_list) == 2:  # U-shape, SFPrompt: the client runs head and tail
        from fedkit.split.describe import ushape_flops

        f = ushape_flops(build_model(s.model, ds.input_shape, ds.num_classes), s.split.cut_list, ds.input_shape)
        share = (f["head"] + f["tail"]) / max(f["whole"], 1.0)
        out.print(f"client's share of forward FLOPs (head + tail vs whole model): {100 * share:.1f}% "
                  f"(per sample: head {f['head']:,.0f}, body {f['body']:,.0f}, tail {f['tail']:,.0f}, "
                  f"whole {f['whole']:,.0f})", **say)


def cmd_export(args: argparse.Namespace) -> int:
    """A fine-tuning run as a peft adapter folder and/or a merged transformers folder."""
    from fedkit.peft.export import export_adapter, export_merged

    if not (args.adapter or args.merged):
        raise SystemExit("fedkit export: give --adapter DIR and/or --merged DIR")
    try:
        if args.adapter:
            out.print(f"adapter: {export_adapter(args.run, args.adapter, args.round)}")
        if args.merged:
            out.print(f"merged model: {export_merged(args.run, args.merged, args.round)}")
    except (ValueError, FileNotFoundError) as e:
        print(f"fedkit export: {e}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedkit.report import plots
    from fedkit.report.run_dir import read_metrics

    runs = {}
    table = Table(title="runs")
    summaries = {}
    for d in args.runs:
        summary_file = Path(d) / "summary.json"
        if not summary_file.exists():
            console.print(f"{d}: no summary.json (not a finished run directory)")
            return EXIT_INVALID
        summaries[d] = json.loads(summary_file.read_text())
    timed = any(sm.get("sim_time_s") for sm in summaries.values())  # devices: a simulated clock
    for col in ("run", "rounds", "final acc", "best acc", "bytes up", "up ratio", "bytes down",
                "down ratio", "wall s") + (("sim s", "to target") if timed else ()):
        table.add_column(col, justify="left" if col == "run" else "right")
    for d, sm in summaries.items():
        path = Path(d)
        rows = read_metrics(path)
        name = _run_name(path, [Path(r) for r in args.runs])
        runs[name] = rows
        table.add_row(
            name,
            str(sm["rounds"]),
            f"{sm['final_accuracy']:.4f}" if sm["final_accuracy"] is not None else "-",
            f"{sm['best_accuracy']:.4f}" if sm["best_accuracy"] is not None else "-",
            _fmt_bytes(sm["total_bytes_up"]),
            f"{sm['ratio_up']:.1f}x" if sm.get("ratio_up") else "-",
            _fmt_bytes(sm["total_bytes_down"]),
            f"{sm['ratio_down']:.1f}x" if sm.get("ratio_down") else "-",
            f"{sm['total_wall_s']:.2f}",
            *((f"{sm.get('sim_time_s') or 0:.1f}",
               "-" if sm.get("time_to_target_s") is None
               else f"{sm['time_to_target_s']:.1f} s, round {sm['rounds_to_target']}") if timed else ()),
        )
    out.print(table)
    if args.plot:
        plot = Path(args.plot)
        plots.compare(runs, plot)
        out.print(f"plot: {plot}")
    return 0


def _run_name(path: Path, all_paths: Sequence[Path]) -> str:
    """A run's directory name, or as much of its path as tells it apart from the others."""
    parts = path.resolve().parts
    for k in range(1, len(parts) + 1):
        tail = parts[-k:]
        if sum(p.resolve().parts[-k:] == tail for p in all_paths) == 1:
            return str(Path(*tail))
    return str(path)


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"fedkit: {what} {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def cmd_server(args: argparse.Namespace) -> int:
    from fedkit.deploy import ServerOptions, serve
    from fedkit.transport.security import ServerTls, TokenAuth

    scenario = load(args.scenario, args.set)
    if args.insecure == bool(args.tls_cert):
        raise SystemExit("fedkit server: give --tls-cert/--tls-key, or --insecure for plaintext")
    tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    opts = ServerOptions(
        listen=args.listen,
        tls=tls,
        auth=TokenAuth.from_file(args.tokens) if args.tokens else None,
        insecure=args.insecure,
        min_clients=args.min_clients,
        wait_timeout_s=args.wait_timeout,
        port_file=args.port_file,
        max_sessions=args.max_sessions,
        simulate=args.simulate,
    )
    out_dir = args.resume or args.out or str(Path(scenario.output.dir) / scenario.name)

    def on_round(row: Mapping[str, Any]) -> None:
        if not args.quiet:
            acc = row.get("test_acc")
            out.print(
                f"round {row['round']}/{scenario.rounds} {row['status']} "
                f"clients {row['clients_finished']}/{row['clients_sampled']}"
                + (f" acc {acc:.4f}" if acc is not None else "")
            )

    def say(msg: str) -> None:
        if not args.quiet:
            out.print(msg, soft_wrap=True, highlight=False)

    summary = serve(scenario, out_dir, opts, on_round, resume=bool(args.resume), overwrite=args.overwrite,
                    force=args.force, say=say)
    out.print(f"done: final accuracy {summary['final_accuracy']}, params {summary['params_sha256'][:16]} -> {out_dir}")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from fedkit.deploy import LocalClient, join
    from fedkit.transport.security import ClientTls

    if args.insecure == bool(args.ca):
        raise SystemExit("fedkit client: give --ca (the server's CA certificate), or --insecure")
    tls = ClientTls.from_files(args.ca, args.cert, args.key, args.server_name) if args.ca else None
    tokens = _pairs([t for t in args.token if "=" in t], "--token")
    plain = [t for t in args.token if "=" not in t]
    token = plain[0] if plain else None
    for item in args.token_file:
        name, sep, path = item.partition("=")
        sep = sep if "/" not in name else ""  # a bare path that happens to contain '='
        text = Path(path if sep else item).read_text().strip()
        if sep:
            tokens[name] = text
        else:
            token = text
    clients = []
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = args.name or Path(item).stem, item
        clients.append(LocalClient(name, path, tokens.get(name, token)))
    import grpc

    wait_s = args.wait_s if args.wait_s > 0 else None
    try:
        from fedkit.peft.join import base_capabilities

        caps = base_capabilities(args.base_model)
        join(args.server, clients, tls=tls, insecure=args.insecure, wait_s=wait_s, capabilities=caps)
    except ConnectionError as e:
        print(f"fedkit client: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:  # credentials refused: retrying cannot help
        print(f"fedkit client: server refused us: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from fedkit.transport.certs import add_clients, make_certs, write_tokens
    from fedkit.transport.security import new_token

    if args.add_client and (args.client or args.host):
        raise SystemExit("fedkit certs: --add-client adds devices to an existing CA; it takes no --client/--host")
    try:
        if args.add_client:
            paths = add_clients(args.out, args.add_client, days=args.days, force=args.force)
            names = args.add_client
        else:
            hosts = args.host or ["localhost", "127.0.0.1"]
            paths = make_certs(args.out, hosts=hosts, clients=args.client, days=args.days, force=args.force)
            names = args.client
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"fedkit certs: {e}", file=sys.stderr)
        return EXIT_INVALID
    if names:
        paths |= write_tokens(args.out, {c: new_token() for c in names})
    for key, path in sorted(paths.items()):
        out.print(f"{key}: {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedkit", description="Federated and split learning from one scenario file.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the server decides")
    sub = p.add_subparsers(dest="command", required=True)

    def with_set(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override a scenario field, e.g. --set rounds=5 --set data.partition.alpha=0.1",
        )

    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario")
    with_set(r)
    r.add_argument("--out", help="run directory (default: <output.dir>/<name>)")
    r.add_argument("--mode", default="inprocess", choices=["inprocess", "processes"])
    r.add_argument("--workers", type=int, help="client processes in --mode processes, Ray workers with --engine flower")
    r.add_argument("--engine", default="fedkit", choices=["fedkit", "flower"],
                   help="flower: run the scenario on Flower's simulation engine, for comparison")
    r.add_argument("--executor", choices=["sequential", "pool", "ray", "stacked"],
                   help="how --mode inprocess runs the clients (sets execution.kind)")
    r.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    r.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    r.add_argument("--force", action="store_true", help="--resume even if the scenario changed")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_run)

    pt = sub.add_parser("pretrain", help="train a scenario's model centrally and save a checkpoint folder")
    pt.add_argument("scenario")
    with_set(pt)
    pt.add_argument("--out", help="checkpoint folder (default: <output.dir>/<name>/model)")
    pt.add_argument("--force", action="store_true", help="overwrite a checkpoint already there")
    pt.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as fedkit run)")
    pt.set_defaults(fn=cmd_pretrain)

    v = sub.add_parser("validate", help="check scenario files without running them")
    v.add_argument("scenarios", nargs="+")
    v.add_argument("--schema-only", action="store_true",
                   help="check the file only, without loading data (a device without the dataset)")
    with_set(v)
    v.set_defaults(fn=cmd_validate)

    d = sub.add_parser("describe", help="show the data partition a scenario produces")
    d.add_argument("scenario")
    with_set(d)
    d.set_defaults(fn=cmd_describe)

    sv = sub.add_parser("server", help="run a scenario's server role over gRPC")
    sv.add_argument("--scenario", required=True)
    with_set(sv)
    sv.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    sv.add_argument("--out", help="run directory (default: <output.dir>/<name>)")
    sv.add_argument("--resume", metavar="RUN_DIR", help="continue from RUN_DIR's last checkpoint")
    sv.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    sv.add_argument("--force", action="store_true", help="--resume even if the scenario changed")
    sv.add_argument("--tls-cert", help="server certificate (PEM)")
    sv.add_argument("--tls-key", help="server private key (PEM)")
    sv.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    sv.add_argument("--tokens", help="JSON file: client name -> sha256 of its token")
    sv.add_argument("--insecure", action="store_true", help="plaintext, no TLS (the server warns)")
    sv.add_argument("--min-clients", type=int, help="clients to wait for before round 1 (default: all)")
    sv.add_argument("--wait-timeout", type=float, help="seconds to wait for them")
    sv.add_argument("--port-file", help="write the bound port here (for --listen HOST:0)")
    sv.add_argument("--max-sessions", type=int, metavar="N",
                    help="admit at most N connected clients (works with --insecure too)")
    sv.add_argument("--simulate", action="store_true",
                    help="charge the scenario's devices on a simulated clock (what --mode processes uses)")
    sv.add_argument("-q", "--quiet", action="store_true")
    sv.set_defaults(fn=cmd_server)

    cl = sub.add_parser("client", help="serve tasks from local data to a fedkit server")
    cl.add_argument("--server", required=True, metavar="HOST:PORT")
    cl.add_argument("--data", action="append", required=True, metavar="[NAME=]FILE.npz",
                    help="the client's data (x_train, y_train[, x_test, y_test]); repeat for a pool")
    cl.add_argument("--name", help="client name (default: the data file's stem)")
    cl.add_argument("--token", action="append", default=[], metavar="[NAME=]TOKEN")
    cl.add_argument("--token-file", action="append", default=[], metavar="[NAME=]FILE",
                    help="read the token from FILE (keeps it off the command line); repeat for a pool")
    cl.add_argument("--ca", help="CA certificate that signed the server's certificate")
    cl.add_argument("--cert", help="client certificate for mutual TLS")
    cl.add_argument("--key", help="client private key for mutual TLS")
    cl.add_argument("--server-name", help="name to check in the server certificate")
    cl.add_argument("--insecure", action="store_true", help="plaintext, no TLS")
    cl.add_argument("--base-model", metavar="DIR",
                    help="the pre-trained model folder this device fine-tunes (its hash is checked at Join)")
    cl.add_argument("--wait-s", type=float, default=300.0, metavar="SECONDS",
                    help="give up (exit 1) after this long without joining; 0: keep trying (default 300)")
    cl.set_defaults(fn=cmd_client)

    ce = sub.add_parser("certs", help="create a CA, server and client certificates, client tokens")
    ce.add_argument("out")
    ce.add_argument("--host", action="append", default=None, help="server host name or IP (repeat)")
    ce.add_argument("--client", action="append", default=[], help="client name (repeat)")
    ce.add_argument("--add-client", action="append", default=[], metavar="NAME",
                    help="add a device to an existing directory, keeping the CA, server key and tokens")
    ce.add_argument("--force", action="store_true", help="overwrite existing credentials")
    ce.add_argument("--days", type=int, default=365)
    ce.set_defaults(fn=cmd_certs)

    ex = sub.add_parser("export", help="write a fine-tuning run as a peft adapter / merged transformers folder")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--adapter", metavar="DIR", help="peft adapter folder (PeftModel.from_pretrained loads it)")
    ex.add_argument("--merged", metavar="DIR", help="transformers folder with the adapters merged in")
    ex.add_argument("--round", type=int, help="that round's adapters (default: the final model)")
    ex.set_defaults(fn=cmd_export)

    c = sub.add_parser("compare", help="compare finished runs: a table and one plot")
    c.add_argument("runs", nargs="+")
    c.add_argument("--plot", help="write the comparison plot here (default: no plot)")
    c.set_defaults(fn=cmd_compare)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args))
    except (ScenarioError, FileExistsError) as e:
        print(f"fedkit: {e}" if isinstance(e, FileExistsError) else e, file=sys.stderr)
        return EXIT_INVALID
    except DataError as e:
        print(f"fedkit: {e}", file=sys.stderr)
        return EXIT_INVALID
    except RunFailed as e:
        print(f"fedkit: run failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions: one line, not a traceback
        print(f"fedkit: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP turned into launch.Terminated
        console.print(str(e) or "interrupted")
        return 128 + int(getattr(e, "signum", 2))


if __name__ == "__main__":
    sys.exit(main())
