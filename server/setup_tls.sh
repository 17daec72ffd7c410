#!/usr/bin/env bash
# Create a CA, the server certificate and per-device tokens (and client certificates).
#   server/setup_tls.sh [-o OUT_DIR] [--force] HOST [HOST...] [-- CLIENT...]   a new deployment
#   server/setup_tls.sh [-o OUT_DIR] --add CLIENT [CLIENT...]                  add devices later
# Hosts before "--" go into the server certificate; names after it get a token and a
# certificate. OUT_DIR defaults to certs/ next to this script. Adding devices keeps the CA, the
# server key and every other token; existing credentials are never overwritten without
# --force (which, for a new deployment, invalidates every device).
# Runs fedkit with $PYTHON (default python3); a source checkout works without installing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/certs"
flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) [ $# -ge 2 ] || { echo "usage: $0 [-o OUT_DIR] [--force] HOST... [-- CLIENT...] | --add CLIENT..." >&2; exit 2; }
        out="$2"; shift 2 ;;
    --force) flags+=(--force); shift ;;
    *) break ;;
  esac
done
args=(certs "$out")
if [ "${1:-}" = "--add" ]; then
  shift
  [ $# -gt 0 ] || { echo "$0: --add needs at least one client name" >&2; exit 2; }
  for c in "$@"; do args+=(--add-client "$c"); done
else
  hosts=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do hosts+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  [ ${#hosts[@]} -gt 0 ] || hosts=(localhost)
  for h in "${hosts[@]}"; do args+=(--host "$h"); done
  for c in "$@"; do args+=(--client "$c"); done
fi
args+=("${flags[@]}")
PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m fedkit "${args[@]}"
echo "Give each device ca.pem and its <name>.token (and <name>.pem/.key for mutual TLS) from $out."
