#!/usr/bin/env bash
# The load benchmark: webprom-edge side by side with nginx and HAProxy under the same load, on one
# pinned core, with ../shared/peerbench. Extra arguments go to peerbench's run.sh, e.g.
#   benches/load.sh --rounds 3
#   benches/load.sh --tests h2 --duration 20
# Needs: nginx haproxy wrk nghttp2-client openssl curl procps iproute2 (Debian packages).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
peerbench="${PEERBENCH:-$repo/../shared/peerbench}"
[ -x "$peerbench/run.sh" ] || { echo "peerbench not found at $peerbench (set PEERBENCH)" >&2; exit 2; }

cargo build --release --manifest-path "$repo/Cargo.toml"
template="$(mktemp --suffix=.toml)"
trap 'rm -f "$template"' EXIT
sed "s|@REPO@|$repo|g" "$repo/benches/ours.toml" > "$template"

cd "$repo"
"$peerbench/run.sh" --targets nginx,haproxy,ours \
  --ours "$repo/target/release/webprom-edge" \
  --ours-config "$template" \
  --ours-args 'run --config @CONFIG@' \
  --ours-log '@DIR@/logs/access-*.jsonl' \
  --ours-name webprom-edge \
  "$@"
