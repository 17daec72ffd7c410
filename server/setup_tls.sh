#!/usr/bin/env bash
# Create a CA, the server certificate and per-device tokens (and client certificates) in certs/.
#   server/setup_tls.sh fl.example.org 10.0.0.5 -- pi-kitchen pi-garage jetson-1
# Hosts before "--" go into the server certificate; names after it get a token and a certificate.
set -euo pipefail
cd "$(dirname "$0")"
hosts=(); clients=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do hosts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
clients=("$@")
args=(certs)
for h in "${hosts[@]:-localhost}"; do args+=(--host "$h"); done
for c in "${clients[@]}"; do args+=(--client "$c"); done
fedkit "${args[@]}"
echo "Give each device ca.pem and its <name>.token (and <name>.pem/.key for mutual TLS)."
