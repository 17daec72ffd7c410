"""The ``fedkit`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedkit.scenario import ScenarioError, load

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

    scenario = load(args.scenario, args.set)
    run_dir = Path(args.out) if args.out else Path(scenario.output.dir) / scenario.name
    totals = {"bytes": 0}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task(scenario.name, total=scenario.rounds, info="")

        def on_round(row: dict[str, Any]) -> None:
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

        summary = run_scenario(scenario, run_dir, mode=args.mode, on_round=on_round, resume=args.resume)
    acc = summary["final_accuracy"]
    out.print(
        f"{scenario.name}: final accuracy {acc if acc is None else f'{acc:.4f}'}, "
        f"best {summary['best_accuracy'] and round(summary['best_accuracy'], 4)}, "
        f"{_fmt_bytes(summary['total_bytes_up'])} up, {_fmt_bytes(summary['total_bytes_down'])} down, "
        f"{summary['total_wall_s']:.2f} s  -> {run_dir}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.scenarios:
        try:
            load(path, args.set)
            out.print(f"{path}: ok")
        except ScenarioError as e:
            bad += 1
            print(e, file=sys.stderr)
    return EXIT_INVALID if bad else 0


def cmd_describe(args: argparse.Namespace) -> int:
    from fedkit.data import describe
    from fedkit.scenario.build import client_names, load_data

    s = load(args.scenario, args.set)
    ds, parts = load_data(s)
    st = describe(parts, ds.y_train, ds.num_classes)
    table = Table(title=f"{s.name}: {ds.name}, partition {s.data.partition}")
    table.add_column("client")
    table.add_column("samples", justify="right")
    table.add_column("labels")
    for name, row in zip(client_names(len(parts)), st.to_table_rows(), strict=True):
        hist = row.get("histogram") or row.get("labels") or row.get("label_counts")
        table.add_row(name, str(row.get("samples", row.get("size"))), " ".join(map(str, hist)))
    out.print(table)
    out.print(json.dumps(st.summary(), indent=2) if hasattr(st, "summary") else st)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedkit.report import plots
    from fedkit.report.run_dir import read_metrics

    runs = {}
    table = Table(title="runs")
    for col in ("run", "rounds", "final acc", "best acc", "bytes up", "bytes down", "wall s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for d in args.runs:
        path = Path(d)
        summary_file = path / "summary.json"
        if not summary_file.exists():
            console.print(f"{d}: no summary.json (not a finished run directory)")
            return EXIT_INVALID
        sm = json.loads(summary_file.read_text())
        rows = read_metrics(path)
        runs[str(path)] = rows
        table.add_row(
            str(path),
            str(sm["rounds"]),
            f"{sm['final_accuracy']:.4f}" if sm["final_accuracy"] is not None else "-",
            f"{sm['best_accuracy']:.4f}" if sm["best_accuracy"] is not None else "-",
            _fmt_bytes(sm["total_bytes_up"]),
            _fmt_bytes(sm["total_bytes_down"]),
            f"{sm['total_wall_s']:.2f}",
        )
    out.print(table)
    plot = Path(args.plot)
    plots.compare(runs, plot)
    out.print(f"plot: {plot}")
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
    r.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check scenario files without running them")
    v.add_argument("scenarios", nargs="+")
    with_set(v)
    v.set_defaults(fn=cmd_validate)

    d = sub.add_parser("describe", help="show the data partition a scenario produces")
    d.add_argument("scenario")
    with_set(d)
    d.set_defaults(fn=cmd_describe)

    c = sub.add_parser("compare", help="compare finished runs: a table and one plot")
    c.add_argument("runs", nargs="+")
    c.add_argument("--plot", default="compare.png")
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
    except ScenarioError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
