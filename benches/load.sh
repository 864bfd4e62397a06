#!/usr/bin/env bash
# The load benchmark: webprom-edge on one pinned core (core 0) in front of an nginx upstream
# serving a 1 KiB body, loaded from core 1 by h2load (HTTP/2 over TLS) and wrk (HTTP/1.1 over
# TLS). Prints each tool's summary: requests per second and latency. Self-contained: everything
# it starts listens on 127.0.0.1 and is stopped at the end.
#   benches/load.sh                 # 20 s per protocol
#   DURATION=60 benches/load.sh
#   GLOBAL=1 benches/load.sh        # also the global rate-limit tier: off, then on, same run
#   GLOBAL=1 ROUNDS=3 DURATION=10 benches/load.sh   # interleaved rounds
# Needs the Debian packages nginx, wrk, nghttp2-client (h2load), util-linux (taskset), curl;
# with GLOBAL=1 also redis-server, which runs on core 1 (with nginx and the load generators:
# the proxy keeps core 0 to itself).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
duration="${DURATION:-20}"
for tool in nginx wrk h2load taskset curl; do
  command -v "$tool" >/dev/null || { echo "load.sh needs $tool (see the header)" >&2; exit 2; }
done

cargo build --release --manifest-path "$repo/Cargo.toml"
dir="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port="$(free_port)"; listen_port="$(free_port)"

# The upstream: nginx, one worker, a 1 KiB answer to every request.
body="$(head -c 1024 /dev/zero | tr '\0' 'x')"
cat > "$dir/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$up_port; location / { default_type text/plain; return 200 "$body"; } } }
CONF
taskset -c 1 nginx -c "$dir/nginx.conf" -p "$dir" & pids+=($!)

# With GLOBAL=1: a redis-server of our own (no persistence) and a fleet secret.
global="${GLOBAL:-0}"
if [ "$global" = 1 ]; then
  command -v redis-server >/dev/null || { echo "GLOBAL=1 needs redis-server" >&2; exit 2; }
  redis_port="$(free_port)"
  taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" >/dev/null & pids+=($!)
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/fleet.secret"
  chmod 600 "$dir/fleet.secret"
fi

# The proxy: benches/ours.toml with its placeholders filled; a development certificate. $1 is
# "off" or "on" (the global rate-limit tier); each round has its own process and port.
round() {
  local tier="$1" listen_port admin_port
  listen_port="$(free_port)"; admin_port="$(free_port)"
  sed -e "s|@REPO@|$repo|g" -e "s|@DIR@|$dir|g" -e "s|@LISTEN_PORT@|$listen_port|g" \
      -e "s|@WORKERS@|1|g" -e "s|@UPSTREAM@|127.0.0.1:$up_port|g" \
      -e "s|@CERT@|$dir/cert.pem|g" -e "s|@KEY@|$dir/key.pem|g" \
      -e "s|self_signed = false|self_signed = true|" -e "s|127.0.0.1:0|127.0.0.1:$admin_port|" \
      "$repo/benches/ours.toml" > "$dir/config.toml"
  if [ "$tier" = on ]; then
    printf '\n[rate_limit.global]\nredis = "redis://127.0.0.1:%s"\nkey_secret_file = "%s"\n' \
      "$redis_port" "$dir/fleet.secret" >> "$dir/config.toml"
  fi
  taskset -c 0 "$repo/target/release/webprom-edge" run --config "$dir/config.toml" \
    2> "$dir/proxy-$tier.log" & local proxy=$!
  for _ in $(seq 100); do
    curl -skf "https://127.0.0.1:$listen_port/" -o /dev/null && break
    sleep 0.1
  done

  local url="https://127.0.0.1:$listen_port/"
  echo "== global rate-limit tier: $tier"
  echo "== HTTP/2: h2load -c 50 -m 10, ${duration}s"
  taskset -c 1 h2load -c 50 -m 10 -D "$duration" "$url" | grep -E "finished in|requests:|time for request"
  echo "== HTTP/1.1 over TLS: wrk -c 50, ${duration}s"
  taskset -c 1 wrk -t 1 -c 50 -d "${duration}s" --latency "$url" | grep -E "Requests/sec|99%|requests in"
  echo "== status of one request: $(curl -sk -o /dev/null -w "%{http_code}" "$url")"
  echo "== access-log lines written: $(cat "$dir"/logs/access-*.jsonl 2>/dev/null | wc -l)"
  if [ "$tier" = on ]; then
    curl -s "http://127.0.0.1:$admin_port/metrics" \
      | grep -E "^webprom_edge_global_limit_(errors_total|duration_seconds_(count|sum))" || true
  fi
  kill "$proxy" 2>/dev/null || true
  wait "$proxy" 2>/dev/null || true
  rm -rf "$dir/logs"
}

# ROUNDS=N: N rounds, interleaved (off, on, off, on, ...) with GLOBAL=1.
for _ in $(seq "${ROUNDS:-1}"); do
  round off
  if [ "$global" = 1 ]; then round on; fi
done
