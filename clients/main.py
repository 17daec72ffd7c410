"""Edge-device entry point: serve federated tasks from this device's own data.

All logic lives in the fedkit package; this file only reads the device's settings (command
line, or FEDKIT_* environment variables as set by fedkit-client.service) and starts the role.

    python clients/main.py --server fl.example.org:50051 --data /var/lib/fedkit/data.npz \
        --name pi-kitchen --token-file /etc/fedkit/pi-kitchen.token --ca /etc/fedkit/ca.pem
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fedkit.deploy import LocalClient, join
from fedkit.transport.security import ClientTls


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=env("FEDKIT_SERVER"), help="HOST:PORT of the fedkit server")
    ap.add_argument("--data", default=env("FEDKIT_DATA"), help=".npz with x_train, y_train[, x_test, y_test]")
    ap.add_argument("--name", default=env("FEDKIT_NAME"), help="this device's client name")
    ap.add_argument("--token-file", default=env("FEDKIT_TOKEN_FILE"))
    ap.add_argument("--ca", default=env("FEDKIT_CA"), help="CA certificate of the server")
    ap.add_argument("--cert", default=env("FEDKIT_CERT"), help="client certificate (mutual TLS)")
    ap.add_argument("--key", default=env("FEDKIT_KEY"), help="client key (mutual TLS)")
    ap.add_argument("--insecure", action="store_true", default=env("FEDKIT_INSECURE") == "1")
    ap.add_argument("--wait-s", type=float, default=float(env("FEDKIT_WAIT_S") or 300),
                    help="exit 1 after this long without joining (0: keep trying)")
    args = ap.parse_args(argv)
    missing = [k for k in ("server", "data", "name") if not getattr(args, k)]
    if missing:
        ap.error(f"missing: {', '.join('--' + m for m in missing)} (or FEDKIT_* variables)")
    if not args.insecure and not args.ca:
        ap.error("give --ca (TLS) or --insecure (plaintext, trusted networks only)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    tls = None if args.insecure else ClientTls.from_files(args.ca, args.cert, args.key)
    try:
        join(args.server, [LocalClient(args.name, args.data, token)], tls=tls, insecure=args.insecure,
             wait_s=args.wait_s if args.wait_s > 0 else None)
    except ConnectionError as e:  # logged above; systemd restarts us after RestartSec
        print(f"fedkit client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
