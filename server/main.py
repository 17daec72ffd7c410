"""Server deployable: run a scenario's rounds for devices that connect over gRPC (TLS).

    python server/main.py --config server/example.yaml

The config names the scenario and the server's own settings; everything else is fedkit's
``fedkit server`` (see `fedkit server --help`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from fedkit.cli import main as fedkit_main

FLAGS = {
    "scenario": "--scenario", "listen": "--listen", "out": "--out", "tls_cert": "--tls-cert",
    "tls_key": "--tls-key", "client_ca": "--client-ca", "tokens": "--tokens",
    "min_clients": "--min-clients", "wait_timeout": "--wait-timeout", "max_sessions": "--max-sessions",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--resume", action="store_true", help="continue the run in `out`")
    args = ap.parse_args(argv)
    base = Path(args.config).parent
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    unknown = sorted(set(cfg) - set(FLAGS) - {"insecure"})
    if unknown:
        ap.error(f"{args.config}: unknown keys {unknown}; allowed: {sorted(FLAGS) + ['insecure']}")
    cli = ["server"]
    for key, flag in FLAGS.items():
        if cfg.get(key) is not None:
            value = str(cfg[key])
            is_path = key in {"scenario", "out", "tls_cert", "tls_key", "client_ca", "tokens"}
            cli += [flag, str(base / value) if is_path else value]
    if cfg.get("insecure"):
        cli.append("--insecure")
    if args.resume:
        cli += ["--resume", str(base / cfg["out"])]
    return fedkit_main(cli)


if __name__ == "__main__":
    sys.exit(main())
