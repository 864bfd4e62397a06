#!/usr/bin/env bash
# The load benchmark: webprom-edge side by side with nginx and HAProxy, each alone on core 0,
# with the same certificate, upstream, load and access logging; upstream and load generators on
# core 1. BENCHMARKS.md ("Load benchmark: method") describes what is measured and how.
#
#   benches/edge/run.sh                                     # every profile, 3 rounds of 10 s
#   benches/edge/run.sh --profiles keepalive --protos h2 --rounds 5 --duration 20
#   benches/edge/run.sh --rounds 1 --duration 3             # a smoke run
#   WEBPROM_EDGE_BIN=/path/to/webprom-edge benches/edge/run.sh   # no build
#   benches/edge/run.sh --help
#
# Needs: nginx, haproxy, wrk, h2load (nghttp2-client), openssl, curl, taskset, ss (iproute2),
# python3, timeout, and cargo to build the proxy and the load generator (benches/loadgen).
# Everything it starts listens on 127.0.0.1 (free ports), is tracked by PID and start time and
# stopped by a trap on exit; load runs are wrapped in `timeout`; a watchdog bounds the whole run.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

PROFILES="keepalive,visitors,newconn,memory"
PROTOS="h2,h1"
TARGETS="ours,nginx,haproxy"
ROUNDS=3
DURATION=10
WARMUP=2
CONNS=50
STREAMS=10
NEWCONN_CONNS=20
IDLE_CONNS=10000
CLIENTS=250000
H1_VISITORS=loadgen
OUT=""
WAIT_QUIET=60
QUIET_PCT=10
NOISY_PCT=25
RETRIES=1
KEEP_TMP=0
MAX_TIME=""

usage() {
  cat <<EOF
usage: benches/edge/run.sh [options]
  --profiles LIST    from keepalive,visitors,newconn,memory (default $PROFILES)
  --protos LIST      from h2,h1 (default $PROTOS); h1 is HTTP/1.1 over TLS
  --targets LIST     from ours,nginx,haproxy,ours-global (default $TARGETS); ours-global is
                     webprom-edge with the fleet-wide rate-limit tier on a redis-server of its own
  --rounds N         interleaved rounds, target order rotated each round (default $ROUNDS)
  --duration S       measured seconds per run (default $DURATION)
  --warmup S         discarded warm-up seconds before each run (default $WARMUP)
  --conns N          client connections of keepalive and visitors (default $CONNS)
  --streams N        HTTP/2 streams in flight per connection (default $STREAMS)
  --newconn-conns N  connections being opened at a time in newconn (default $NEWCONN_CONNS)
  --idle-conns N     idle connections of the memory profile (default $IDLE_CONNS)
  --clients N        distinct client addresses of the visitors corpus (default $CLIENTS)
  --h1-visitors wrk|loadgen   HTTP/1.1 client of the visitors profile (default $H1_VISITORS)
  --out DIR          results directory (default target/bench-edge/<date>-<time>)
  --wait-quiet S     before each target, wait up to S s for other processes to go quiet
                     (default $WAIT_QUIET; 0: don't wait)
  --quiet-pct P      quiet: other processes below P% of one core (default $QUIET_PCT)
  --noisy-pct P      redo a run during which other processes used more than P% of a core
                     (default $NOISY_PCT) ...
  --retries N        ... at most N times (default $RETRIES)
  --max-time S       hard limit for the whole run (default: from the plan)
  --keep-tmp         keep the scratch directory (configs, logs) for inspection
environment: WEBPROM_EDGE_BIN  the proxy binary (default: cargo build --release of this repository,
                               into CARGO_TARGET_DIR when set)
             LOADGEN_BIN       the load generator (default: built from benches/loadgen into
                               \$CARGO_TARGET_DIR/loadgen, or target/loadgen)
EOF
}

die() { echo "run.sh: $*" >&2; exit 2; }
say() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --profiles) PROFILES=$2; shift 2;;
    --protos) PROTOS=$2; shift 2;;
    --targets) TARGETS=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --warmup) WARMUP=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --streams) STREAMS=$2; shift 2;;
    --newconn-conns) NEWCONN_CONNS=$2; shift 2;;
    --idle-conns) IDLE_CONNS=$2; shift 2;;
    --clients) CLIENTS=$2; shift 2;;
    --h1-visitors) H1_VISITORS=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --wait-quiet) WAIT_QUIET=$2; shift 2;;
    --quiet-pct) QUIET_PCT=$2; shift 2;;
    --noisy-pct) NOISY_PCT=$2; shift 2;;
    --retries) RETRIES=$2; shift 2;;
    --max-time) MAX_TIME=$2; shift 2;;
    --keep-tmp) KEEP_TMP=1; shift;;
    -h|--help) usage; exit 0;;
    *) usage >&2; die "unknown option: $1";;
  esac
done

for v in ROUNDS DURATION WARMUP CONNS STREAMS NEWCONN_CONNS IDLE_CONNS CLIENTS WAIT_QUIET \
         QUIET_PCT NOISY_PCT RETRIES; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "${v,,} must be a whole number"
done
[ "$ROUNDS" -ge 1 ] && [ "$DURATION" -ge 1 ] || die "--rounds and --duration must be at least 1"
IFS=, read -r -a PROFILE_LIST <<<"$PROFILES"
IFS=, read -r -a PROTO_LIST <<<"$PROTOS"
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for p in "${PROFILE_LIST[@]}"; do
  case "$p" in keepalive|visitors|newconn|memory) ;; *) die "unknown profile: $p";; esac
done
for p in "${PROTO_LIST[@]}"; do case "$p" in h2|h1) ;; *) die "unknown protocol: $p";; esac; done
case "$H1_VISITORS" in wrk|loadgen) ;; *) die "--h1-visitors is wrk or loadgen";; esac

need() { command -v "$1" >/dev/null 2>&1 || die "needs $1 (see the header of this script)"; }
for t in nginx wrk h2load openssl curl taskset ss python3 timeout pgrep; do need "$t"; done
for t in "${TARGET_LIST[@]}"; do
  case "$t" in
    ours|nginx) ;;
    haproxy) need haproxy;;
    ours-global) need redis-server;;
    *) die "unknown target: $t";;
  esac
done
[ "$(nproc)" -ge 2 ] || die "needs 2 cores: the server under test on core 0, the rest on core 1"
CPU_SERVER=0
CPU_LOAD=1

# ------------------------------------------------------------------ processes --
# Every process started is remembered as "pid:starttime" (a recycled PID is never signalled)
# and stopped by the EXIT trap: TERM, then KILL after 5 s. Never by name.
TRACKED=()
stat_field() { # stat_field PID N: field N of /proc/PID/stat (proc(5) numbering)
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  local -a f
  read -r -a f <<<"$s"
  echo "${f[$(( $2 - 3 ))]}"
}
tree_of() { # tree_of PID: PID and all its descendants
  local p
  echo "$1"
  for p in $(pgrep -P "$1" 2>/dev/null); do tree_of "$p"; done
}
track() { # track PID...: remember each and its descendants
  local p st
  for p in $(for q in "$@"; do tree_of "$q"; done); do
    st=$(stat_field "$p" 22) && TRACKED+=("$p:$st")
  done
}
same_process() { # same_process pid:start
  local cur
  cur=$(stat_field "${1%%:*}" 22) || return 1
  [ "$cur" = "${1##*:}" ]
}
stop_entries() { # stop_entries pid:start...: TERM, wait up to 5 s, KILL what is left
  local e any
  for e in "$@"; do same_process "$e" && kill -TERM "${e%%:*}" 2>/dev/null; done
  for _ in $(seq 50); do
    any=0
    for e in "$@"; do same_process "$e" && { any=1; break; }; done
    [ "$any" = 0 ] && return 0
    sleep 0.1
  done
  for e in "$@"; do same_process "$e" && kill -KILL "${e%%:*}" 2>/dev/null; done
  return 0
}
stop_tree() { # stop_tree PID: stop a process we started and everything under it
  local -a entries=()
  local p st
  for p in $(tree_of "$1"); do st=$(stat_field "$p" 22) && entries+=("$p:$st"); done
  [ ${#entries[@]} -gt 0 ] && stop_entries "${entries[@]}"
  wait "$1" 2>/dev/null
  return 0
}
CLEANED=0
cleanup() {
  [ "$CLEANED" = 1 ] && return
  CLEANED=1
  local -a all=()
  local e p st
  for e in "${TRACKED[@]}"; do
    same_process "$e" || continue
    for p in $(tree_of "${e%%:*}"); do st=$(stat_field "$p" 22) && all+=("$p:$st"); done
  done
  [ ${#all[@]} -gt 0 ] && stop_entries "${all[@]}"
  if [ -n "${TMP:-}" ] && [ -d "$TMP" ]; then
    if [ "$KEEP_TMP" = 1 ]; then say "scratch directory kept: $TMP"; else rm -rf "$TMP"; fi
  fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM HUP

# --------------------------------------------------------------------- plan --
NP=${#PROTO_LIST[@]}; NT=${#TARGET_LIST[@]}
CELL=$(( WARMUP + DURATION + 8 ))
PLAN=30
for p in "${PROFILE_LIST[@]}"; do
  case "$p" in
    keepalive|visitors) PLAN=$(( PLAN + ROUNDS * NT * (NP * CELL + 5) ));;
    newconn) PLAN=$(( PLAN + ROUNDS * NT * (2 * NP * CELL + 5) ));;
    memory) PLAN=$(( PLAN + ROUNDS * NT * NP * 45 ));;
  esac
done
[ -n "$MAX_TIME" ] || MAX_TIME=$(( PLAN * (RETRIES + 1) + WAIT_QUIET * ROUNDS * NT * 4 + 600 ))

STAMP=$(date +%Y%m%d-%H%M%S)
[ -n "$OUT" ] || OUT="$REPO/target/bench-edge/$STAMP"
mkdir -p "$OUT/raw" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d /tmp/bench-edge.XXXXXX) || die "mktemp failed"
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
[ "$NOFILE" -gt 1048576 ] && NOFILE=1048576
ulimit -n "$NOFILE" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" -lt $(( IDLE_CONNS + 500 )) ]; then
  say "open-file limit $NOFILE is below --idle-conns $IDLE_CONNS + 500: lowering --idle-conns"
  IDLE_CONNS=$(( NOFILE - 500 ))
fi
CLK_TCK=$(getconf CLK_TCK)

say "results: $OUT; plan about ${PLAN}s (at most ${MAX_TIME}s)"

( trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$MAX_TIME" & sp=$!
  wait "$sp" && { echo "run.sh: --max-time ${MAX_TIME}s reached, stopping" >&2; kill -TERM $$; } ) &
track $!

# ------------------------------------------------------------------ binaries --
# Cargo's target directory: CARGO_TARGET_DIR when set, as cargo itself does.
CARGO_TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [ -n "${WEBPROM_EDGE_BIN:-}" ]; then
  OURS_BIN=$WEBPROM_EDGE_BIN
else
  say "building webprom-edge (cargo build --release)"
  cargo build --release --manifest-path "$REPO/Cargo.toml" >"$OUT/raw/build-ours.txt" 2>&1 \
    || die "cargo build failed: $OUT/raw/build-ours.txt"
  OURS_BIN="$CARGO_TARGET/release/webprom-edge"
fi
[ -x "$OURS_BIN" ] || die "not executable: $OURS_BIN"
if [ -n "${LOADGEN_BIN:-}" ]; then
  LOADGEN=$LOADGEN_BIN
else
  say "building the load generator (benches/loadgen)"
  cargo build --release --manifest-path "$HERE/../loadgen/Cargo.toml" \
    --target-dir "$CARGO_TARGET/loadgen" >"$OUT/raw/build-loadgen.txt" 2>&1 \
    || die "cargo build of benches/loadgen failed: $OUT/raw/build-loadgen.txt"
  LOADGEN="$CARGO_TARGET/loadgen/release/webprom-edge-loadgen"
fi
[ -x "$LOADGEN" ] || die "not executable: $LOADGEN"

# ------------------------------------------------------------------- helpers --
USED_PORTS=" "
free_port() { # free_port VAR: a port below the ephemeral range with no socket on it
  local p
  for _ in $(seq 500); do
    p=$(( 20000 + RANDOM % 12000 ))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port"
}
wait_listen() { # wait_listen PORT PID NAME: up to 20 s
  for _ in $(seq 200); do
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0
    kill -0 "$2" 2>/dev/null || { say "$3 exited while starting"; return 1; }
    sleep 0.1
  done
  say "$3 did not listen on :$1 within 20 s"
  return 1
}
owns_port() { # owns_port PORT PID: every listener on PORT is PID or under it
  local tree p
  tree=" $(tree_of "$2" | tr '\n' ' ') "
  for p in $(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
    [[ $tree == *" $p "* ]] || { say "port $1 is also served by PID $p, not ours"; return 1; }
  done
  return 0
}
tree_ticks() { # user+system clock ticks of PID and its descendants
  local t=0 p u s
  for p in $(tree_of "$1"); do
    u=$(stat_field "$p" 14) || continue
    s=$(stat_field "$p" 15) || continue
    t=$(( t + u + s ))
  done
  echo "$t"
}
tree_rss_kb() { # resident memory of PID and its descendants, KiB
  local t=0 p r
  for p in $(tree_of "$1"); do
    r=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null) || continue
    t=$(( t + ${r:-0} ))
  done
  echo "$t"
}
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
render() { # render TEMPLATE OUT NAME=VALUE...
  local tpl=$1 out=$2 expr="" kv
  shift 2
  for kv in "$@"; do expr+="s|@${kv%%=*}@|${kv#*=}|g;"; done
  sed -e "$expr" "$tpl" > "$out"
}
pinned() { taskset -c "$1" "${@:2}"; }

# foreign CPU: processes that are not this script or under it.
foreign() { # foreign SECONDS: prints "PCT top-processes"
  python3 "$HERE/report.py" foreign --root $$ --seconds "$1"
}
wait_quiet() {
  local deadline=$(( SECONDS + WAIT_QUIET )) line pct
  while :; do
    line=$(foreign 1)
    pct=${line%% *}
    [ "${pct%.*}" -le "$QUIET_PCT" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "other processes use ${pct}% of a core; measuring anyway (see other% and foreign.txt)"
      printf '%(%H:%M:%S)T %s\n' -1 "$line" >> "$OUT/foreign.txt"
      return 1
    fi
    say "waiting for other processes to go quiet: $line"
    sleep 3
  done
}

# ---------------------------------------------------------------- run assets --
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 || die "openssl failed"
cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/cert+key.pem"
chmod 600 "$TMP/key.pem" "$TMP/cert+key.pem"

# The clients offer only AES-128-GCM (TLS 1.3 and 1.2) and X25519, so every server negotiates
# the same suite (HAProxy would pick AES-256-GCM). wrk and curl read this file; h2load gets the
# same lists as options; benches/loadgen has them built in.
cat > "$TMP/client-openssl.cnf" <<'EOF'
openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.2
CipherString = ECDHE-ECDSA-AES128-GCM-SHA256
Ciphersuites = TLS_AES_128_GCM_SHA256
Groups = X25519
EOF
CLIENT_ENV=(env "OPENSSL_CONF=$TMP/client-openssl.cnf")
H2LOAD_TLS=(--ciphers=ECDHE-ECDSA-AES128-GCM-SHA256 --tls13-ciphers=TLS_AES_128_GCM_SHA256)

CORPUS=""
if [[ ",$PROFILES," == *",visitors,"* ]]; then
  say "writing the visitors corpus ($CLIENTS client addresses)"
  CORPUS="$TMP/corpus"
  python3 "$HERE/make_corpus.py" "$CORPUS" --clients "$CLIENTS" || die "make_corpus.py failed"
  cp "$CORPUS/corpus.txt" "$OUT/corpus.txt"
fi

# ------------------------------------------------------------------ upstream --
free_port UP_PORT
mkdir -p "$TMP/upstream/logs" "$TMP/upstream/tmp"
render "$HERE/upstream-nginx.conf" "$TMP/upstream/nginx.conf" DIR="$TMP/upstream" \
  PORT="$UP_PORT" NOFILE="$NOFILE" BODY="$BODY"
pinned "$CPU_LOAD" nginx -p "$TMP/upstream" -e "$TMP/upstream/logs/error.log" \
  -c "$TMP/upstream/nginx.conf" >"$TMP/upstream/logs/stdout.log" 2>&1 &
UP_PID=$!
track "$UP_PID"
wait_listen "$UP_PORT" "$UP_PID" "upstream nginx" || die "upstream failed: $(cat "$TMP/upstream/logs/error.log")"
sleep 0.2
track "$UP_PID"
owns_port "$UP_PORT" "$UP_PID" || die "upstream port shared"
got=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}:%{size_download}' "http://127.0.0.1:$UP_PORT/")
[ "$got" = "200:1024" ] || die "upstream answers $got"
cp "$TMP/upstream/nginx.conf" "$OUT/raw/upstream-nginx.conf"

# --------------------------------------------------------------- environment --
{
  echo "date: $(date -Is)"
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "host: $(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "placement: server under test on core $CPU_SERVER (one worker); upstream nginx, load generators (and redis-server for ours-global) on core $CPU_LOAD"
  echo "profiles: $PROFILES  protocols: $PROTOS  targets: $TARGETS  rounds: $ROUNDS"
  echo "duration: ${DURATION}s  warm-up: ${WARMUP}s  conns: $CONNS  h2 streams/conn: $STREAMS  newconn at a time: $NEWCONN_CONNS  idle conns: $IDLE_CONNS  visitors clients: $CLIENTS  h1 visitors client: $H1_VISITORS"
  echo "open-file limit: $NOFILE"
  echo "ours: $OURS_BIN ($("$OURS_BIN" --version 2>/dev/null | head -1), modified $(date -r "$OURS_BIN" -Is)$([ -n "${WEBPROM_EDGE_BIN:-}" ] && echo ', given by WEBPROM_EDGE_BIN: not necessarily built from this commit'))"
  echo "loadgen: $LOADGEN"
  echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v 2>&1 | head -1)"
  command -v redis-server >/dev/null && echo "redis-server: $(redis-server --version 2>&1 | head -1)"
  echo "h2load: $(h2load --version 2>&1 | head -1)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "openssl: $(openssl version)"
  echo "python3: $(python3 --version 2>&1)"
  echo "load average at start: $(cat /proc/loadavg)"
} > "$OUT/env.txt"

# -------------------------------------------------------------------- targets --
REDIS_PID=""
start_redis() {
  [ -n "$REDIS_PID" ] && return 0
  free_port REDIS_PORT
  mkdir -p "$TMP/redis"
  pinned "$CPU_LOAD" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$TMP/redis" >"$TMP/redis/log" 2>&1 &
  REDIS_PID=$!
  track "$REDIS_PID"
  wait_listen "$REDIS_PORT" "$REDIS_PID" redis-server || return 1
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$TMP/redis/fleet.secret"
  chmod 600 "$TMP/redis/fleet.secret"
}

# start_target NAME: sets SRV_PID SRV_PORT SRV_DIR SRV_LOG (a file, or a glob for ours)
start_target() {
  local name=$1 dir
  dir="$TMP/$name-$((++STARTS))"
  SRV_DIR=$dir; SRV_PID=""
  mkdir -p "$dir/logs" "$dir/tmp"
  free_port SRV_PORT
  case "$name" in
    nginx)
      render "$HERE/nginx.conf" "$dir/nginx.conf" DIR="$dir" PORT="$SRV_PORT" \
        UPSTREAM_PORT="$UP_PORT" CERT="$TMP/cert.pem" KEY="$TMP/key.pem" NOFILE="$NOFILE" \
        WORKER_CONNECTIONS=$(( NOFILE - 100 ))
      pinned "$CPU_SERVER" nginx -p "$dir" -e "$dir/logs/error.log" -c "$dir/nginx.conf" \
        >"$dir/logs/stdout.log" 2>&1 &
      SRV_PID=$!
      SRV_LOG="$dir/logs/access.log";;
    haproxy)
      render "$HERE/haproxy.cfg" "$dir/haproxy.cfg" PORT="$SRV_PORT" UPSTREAM_PORT="$UP_PORT" \
        PEM="$TMP/cert+key.pem" MAXCONN=$(( IDLE_CONNS + 200 )) NOFILE="$NOFILE"
      pinned "$CPU_SERVER" haproxy -db -f "$dir/haproxy.cfg" \
        >>"$dir/logs/access.log" 2>"$dir/logs/error.log" &
      SRV_PID=$!
      SRV_LOG="$dir/logs/access.log";;
    ours|ours-global)
      local admin
      free_port admin
      render "$HERE/ours.toml" "$dir/config.toml" DIR="$dir" PORT="$SRV_PORT" \
        UPSTREAM_PORT="$UP_PORT" CERT="$TMP/cert.pem" KEY="$TMP/key.pem" REPO="$REPO" \
        ADMIN_PORT="$admin"
      SRV_ADMIN=$admin
      if [ "$name" = ours-global ]; then
        start_redis || return 1
        printf '\n[rate_limit.global]\nredis = "redis://127.0.0.1:%s"\nkey_secret_file = "%s"\n' \
          "$REDIS_PORT" "$TMP/redis/fleet.secret" >> "$dir/config.toml"
      fi
      pinned "$CPU_SERVER" "$OURS_BIN" run --config "$dir/config.toml" \
        >"$dir/logs/stdout.log" 2>"$dir/logs/error.log" &
      SRV_PID=$!
      SRV_LOG="$dir/logs/access-*.jsonl";;
  esac
  track "$SRV_PID"
  if ! wait_listen "$SRV_PORT" "$SRV_PID" "$name"; then
    tail -n 20 "$dir/logs/error.log" >&2 2>/dev/null
    return 1
  fi
  sleep 0.3
  track "$SRV_PID"
  owns_port "$SRV_PORT" "$SRV_PID" || return 1
  for f in "$dir"/nginx.conf "$dir"/haproxy.cfg "$dir"/config.toml; do
    [ -f "$f" ] && cp "$f" "$OUT/raw/$name-$(basename "$f")"
  done
  preflight "$name"
}

# One request per protocol through the server: status 200 and the 1 KiB body.
preflight() {
  local got proto
  for proto in --http2 --http1.1; do
    got=$("${CLIENT_ENV[@]}" curl -sk --max-time 5 "$proto" -o /dev/null \
      -w '%{http_code}:%{size_download}:%{http_version}' "https://127.0.0.1:$SRV_PORT/")
    echo "$1 $proto: $got" >> "$OUT/preflight.txt"
    case "$got" in 200:1024:*) ;; *) say "$1: preflight $proto got $got"; return 1;; esac
  done
}

stop_target() {
  [ -n "$SRV_PID" ] && stop_tree "$SRV_PID"
  SRV_PID=""
  rm -rf "$SRV_DIR/logs"/access* # can be hundreds of MB
}

log_lines() { # access-log lines written so far by the server under test
  # shellcheck disable=SC2086
  cat $SRV_LOG 2>/dev/null | wc -l
}

# ------------------------------------------------------------------ measuring --
TSV="$OUT/results.tsv"
COLUMNS_TSV="round profile target proto mode rate mean_ms p50_ms p99_ms errors requests logged srv_pct up_pct lg_pct other_pct srv_us_per_req rss_kb conns resumed rss_before_kb bytes_per_conn distinct_clients tls attempts"
echo "$COLUMNS_TSV" | tr ' ' '\t' > "$TSV"
row() { local IFS=$'\t'; echo "$*" >> "$TSV"; }
kv() { awk -F= -v k="$1" '$1==k{sub(/^[^=]*=/,""); print; exit}' "$2"; }
to_ms() { # "1.23ms" / "456.00us" / "1.2s" -> milliseconds
  awk -v v="$1" 'BEGIN{ n=v+0; u=v; sub(/^[0-9.]+/,"",u);
    if (u=="us") n/=1000; else if (u=="s") n*=1000; else if (u=="m") n*=60000; printf "%.3f", n }'
}

# load_cmd PROFILE PROTO MODE SECONDS LOGFILE: sets CMD (the load generator's command line)
load_cmd() {
  local profile=$1 proto=$2 mode=$3 secs=$4 h2log=$5 url="https://127.0.0.1:$SRV_PORT/"
  local addr="127.0.0.1:$SRV_PORT"
  case "$profile:$proto" in
    keepalive:h2)
      CMD=(h2load -t1 "${H2LOAD_TLS[@]}" -c "$CONNS" -m "$STREAMS" -D "$secs")
      [ -n "$h2log" ] && CMD+=(--log-file="$h2log")
      CMD+=("$url");;
    keepalive:h1)
      CMD=("${CLIENT_ENV[@]}" wrk -t1 -c "$CONNS" -d "${secs}s" --latency "$url");;
    visitors:h2)
      CMD=("$LOADGEN" run --addr "$addr" --proto h2 --conns "$CONNS" --streams "$STREAMS"
           --duration "$secs" --corpus "$CORPUS");;
    visitors:h1)
      if [ "$H1_VISITORS" = wrk ]; then
        CMD=("${CLIENT_ENV[@]}" wrk -t1 -c "$CONNS" -d "${secs}s" --latency
             -s "$HERE/visitors.lua" "$url" -- "$CORPUS" "$RANDOM")
      else
        CMD=("$LOADGEN" run --addr "$addr" --proto h1 --conns "$CONNS" --duration "$secs"
             --corpus "$CORPUS" --seed "$RANDOM")
      fi;;
    newconn:*)
      CMD=("$LOADGEN" run --addr "$addr" --proto "$proto" --new-conn --conns "$NEWCONN_CONNS"
           --duration "$secs")
      [ "$mode" = resumed ] && CMD+=(--resume);;
  esac
}

# parse_output TOOL FILE H2LOG: sets RATE MEAN P50 P99 ERRORS REQUESTS RESUMED CONNS_DONE TLS
parse_output() {
  local tool=$1 f=$2 h2log=$3
  RATE=- MEAN=- P50=- P99=- ERRORS=- REQUESTS=0 RESUMED=- CONNS_DONE=- TLS=- DISTINCT=-
  case "$tool" in
    h2load)
      RATE=$(awk '/^finished in/{gsub(",","",$4); print $4}' "$f")
      REQUESTS=$(awk '/^requests:/{print $8}' "$f")
      ERRORS=$(awk '/^requests:/{e=$10+$12+$14} /^status codes:/{e+=$5+$7+$9} END{print e+0}' "$f")
      MEAN=$(awk '/^time for request:/{print $6}' "$f"); [ -n "$MEAN" ] && MEAN=$(to_ms "$MEAN")
      TLS="$(awk -F': ' '/^TLS Protocol/{print $2}' "$f") $(awk -F': ' '/^Cipher/{print $2}' "$f") alpn=$(awk -F': ' '/^Application protocol/{print $2}' "$f")"
      if [ -s "$h2log" ]; then
        read -r P50 P99 < <(awk '$2>0{print $3}' "$h2log" | sort -n | awk '{v[NR]=$1} END{
          if (NR==0) { print "- -"; exit }
          a=int(NR*0.50); if (a<NR*0.50) a++; b=int(NR*0.99); if (b<NR*0.99) b++;
          printf "%.3f %.3f\n", v[a]/1000, v[b]/1000 }')
      fi;;
    wrk)
      RATE=$(awk '/^Requests\/sec:/{print $2}' "$f")
      REQUESTS=$(awk '/requests in/{print $1}' "$f")
      ERRORS=$(awk '/Non-2xx or 3xx/{n+=$NF} /Socket errors:/{gsub(",","");n+=$4+$6+$8+$10} END{print n+0}' "$f")
      MEAN=$(awk '$1=="Latency" && $2 ~ /^[0-9]/{print $2; exit}' "$f"); [ -n "$MEAN" ] && MEAN=$(to_ms "$MEAN")
      P50=$(awk '$1=="50%"{print $2}' "$f"); [ -n "$P50" ] && P50=$(to_ms "$P50")
      P99=$(awk '$1=="99%"{print $2}' "$f"); [ -n "$P99" ] && P99=$(to_ms "$P99")
      TLS="client OpenSSL config: AES-128-GCM, X25519; no ALPN";;
    loadgen)
      RATE=$(kv req_per_s "$f"); MEAN=$(kv mean_ms "$f"); P50=$(kv p50_ms "$f"); P99=$(kv p99_ms "$f")
      REQUESTS=$(kv requests "$f")
      ERRORS=$(( $(kv errors "$f") + $(kv other_status "$f") + $(kv connect_errors "$f") ))
      RESUMED=$(kv resumed "$f"); CONNS_DONE=$(kv connections "$f"); TLS=$(kv tls "$f")
      DISTINCT=$(kv distinct_clients "$f");;
  esac
  [ -n "$RATE" ] || RATE=-
  [ -n "$REQUESTS" ] || REQUESTS=0
  [ -n "$DISTINCT" ] || DISTINCT=-
}

# measure ROUND PROFILE TARGET PROTO MODE: a warm-up run, then a measured run; one TSV row.
measure() {
  local round=$1 profile=$2 name=$3 proto=$4 mode=$5
  local raw="$OUT/raw/$profile-$name-$proto${mode:+-$mode}.r$round" tool tmo=$(( WARMUP + DURATION + 30 ))
  local attempt=1
  while :; do
    load_cmd "$profile" "$proto" "$mode" "$WARMUP" ""
    pinned "$CPU_LOAD" timeout -k 5 "$tmo" "${CMD[@]}" >"$raw.warmup.txt" 2>&1 &
    track $!
    wait $!
    sleep 1.2   # the access-log writers catch up with the warm-up
    local h2log="$TMP/h2load.log" l0 s0 u0 y0 t0 s1 u1 y1 t1 rc lgsec
    rm -f "$h2log"
    load_cmd "$profile" "$proto" "$mode" "$DURATION" "$h2log"
    case "${CMD[0]}" in h2load) tool=h2load;; env) tool=wrk;; *) tool=loadgen;; esac
    l0=$(log_lines)
    y0=$(busy_ticks); s0=$(tree_ticks "$SRV_PID"); u0=$(tree_ticks "$UP_PID")
    [ -n "$REDIS_PID" ] && u0=$(( u0 + $(tree_ticks "$REDIS_PID") ))
    t0=$(date +%s.%N)
    ( pinned "$CPU_LOAD" timeout -k 5 "$tmo" "${CMD[@]}" >"$raw.txt" 2>&1; rc=$?; times >"$TMP/times"; exit $rc ) &
    track $!
    wait $!
    rc=$?
    t1=$(date +%s.%N); s1=$(tree_ticks "$SRV_PID"); u1=$(tree_ticks "$UP_PID"); y1=$(busy_ticks)
    [ -n "$REDIS_PID" ] && u1=$(( u1 + $(tree_ticks "$REDIS_PID") ))
    lgsec=$(awk 'NR==2{ t=0; for(i=1;i<=2;i++){ split($i,a,"m"); sub(/s$/,"",a[2]); t+=a[1]*60+a[2] } print t }' "$TMP/times")
    sleep 1.5   # every record of the measured run reaches its file
    local logged=$(( $(log_lines) - l0 )) rss
    rss=$(tree_rss_kb "$SRV_PID")
    [ "$rc" = 0 ] || say "$name $profile $proto $mode: load generator exit status $rc (see $raw.txt)"
    parse_output "$tool" "$raw.txt" "$h2log"
    # wrk's script walks the client addresses in order too: one per request.
    if [ "$profile" = visitors ] && [ "$DISTINCT" = - ]; then
      DISTINCT=$(( REQUESTS < CLIENTS ? REQUESTS : CLIENTS ))
    fi
    local wall srv up lg other usreq
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
    srv=$(awk -v d=$(( s1 - s0 )) -v w="$wall" -v hz="$CLK_TCK" 'BEGIN{printf "%.0f", d/hz/w*100}')
    up=$(awk -v d=$(( u1 - u0 )) -v w="$wall" -v hz="$CLK_TCK" 'BEGIN{printf "%.0f", d/hz/w*100}')
    lg=$(awk -v s="$lgsec" -v w="$wall" 'BEGIN{printf "%.0f", s/w*100}')
    other=$(awk -v y=$(( y1 - y0 )) -v sv=$(( s1 - s0 )) -v u=$(( u1 - u0 )) -v lg="$lgsec" -v w="$wall" -v hz="$CLK_TCK" \
      'BEGIN{o=(y-sv-u)/hz-lg; if (o<0) o=0; printf "%.0f", o/w*100}')
    usreq=$(awk -v d=$(( s1 - s0 )) -v n="$REQUESTS" -v hz="$CLK_TCK" 'BEGIN{if (n>0) printf "%.1f", d/hz/n*1e6; else print "-"}')
    say "$name $profile $proto${mode:+ $mode} r$round: $RATE/s p50=${P50} p99=${P99} ms err=$ERRORS srv=${srv}% lg=${lg}% other=${other}% ${usreq} us/req logged=$logged/$REQUESTS"
    if [ "$other" -gt "$NOISY_PCT" ] && [ "$attempt" -le "$RETRIES" ]; then
      say "other processes used ${other}% of a core during the run: redoing it"
      foreign 1 | sed "s/^/$(date +%T) during $name $profile $proto: /" >> "$OUT/foreign.txt"
      mv "$raw.txt" "$raw.noisy$attempt.txt"
      attempt=$(( attempt + 1 ))
      wait_quiet
      continue
    fi
    row "$round" "$profile" "$name" "$proto" "${mode:--}" "$RATE" "$MEAN" "$P50" "$P99" "$ERRORS" \
      "$REQUESTS" "$logged" "$srv" "$up" "$lg" "$other" "$usreq" "$rss" "$CONNS_DONE" "$RESUMED" \
      - - "$DISTINCT" "$TLS" "$attempt"
    break
  done
}

# measure_memory ROUND TARGET PROTO: RSS before and with IDLE_CONNS idle connections.
measure_memory() {
  local round=$1 name=$2 proto=$3 raw="$OUT/raw/memory-$name-$proto.r$round"
  sleep 1
  local before after est still sockets lg tmo=$(( 240 ))
  before=$(tree_rss_kb "$SRV_PID")
  pinned "$CPU_LOAD" timeout -k 5 "$tmo" "$LOADGEN" hold --addr "127.0.0.1:$SRV_PORT" \
    --proto "$proto" --conns "$IDLE_CONNS" --hold 6 >"$raw.txt" 2>&1 &
  lg=$!
  track "$lg"
  for _ in $(seq 1800); do
    grep -q '^ready' "$raw.txt" 2>/dev/null && break
    kill -0 "$lg" 2>/dev/null || break
    sleep 0.1
  done
  sleep 2
  after=$(tree_rss_kb "$SRV_PID")
  sockets=$(ss -Htn state established "sport = :$SRV_PORT" 2>/dev/null | wc -l)
  wait "$lg"
  est=$(kv established "$raw.txt"); still=$(kv still_open "$raw.txt")
  : "${est:=0}" "${still:=0}"
  echo "server sockets established while held: $sockets" >> "$raw.txt"
  local per="-"
  [ "$est" -gt 0 ] && per=$(( (after - before) * 1024 / est ))
  say "$name memory $proto r$round: RSS ${before} -> ${after} KiB with $est idle connections ($sockets at the server, $still still open at the end): $per bytes each"
  [ "$est" = "$IDLE_CONNS" ] && [ "$still" = "$IDLE_CONNS" ] \
    || say "$name memory $proto: only $est of $IDLE_CONNS connections opened, $still stayed open"
  row "$round" memory "$name" "$proto" idle - - - - $(( IDLE_CONNS - still )) 0 - - - - - - "$after" "$est" - \
    "$before" "$per" - "server sockets=$sockets" 1
}

modes_of() { case "$1" in newconn) echo "full resumed";; *) echo "";; esac; }

# ---------------------------------------------------------------------- main --
STARTS=0
for (( round = 1; round <= ROUNDS; round++ )); do
  for profile in "${PROFILE_LIST[@]}"; do
    for (( i = 0; i < NT; i++ )); do
      name=${TARGET_LIST[$(( (i + round - 1) % NT ))]}
      say "== round $round/$ROUNDS, $profile, $name"
      wait_quiet
      if [ "$profile" = memory ]; then
        for proto in "${PROTO_LIST[@]}"; do
          if start_target "$name"; then
            measure_memory "$round" "$name" "$proto"
          else
            row "$round" memory "$name" "$proto" idle FAILED - - - - - - - - - - - - - - - - - - 1
          fi
          stop_target
        done
        continue
      fi
      if ! start_target "$name"; then
        for proto in "${PROTO_LIST[@]}"; do
          row "$round" "$profile" "$name" "$proto" - FAILED - - - - - - - - - - - - - - - - - - 1
        done
        stop_target
        continue
      fi
      for proto in "${PROTO_LIST[@]}"; do
        modes=$(modes_of "$profile")
        if [ -n "$modes" ]; then
          for mode in $modes; do measure "$round" "$profile" "$name" "$proto" "$mode"; done
        else
          measure "$round" "$profile" "$name" "$proto" ""
        fi
      done
      if [ "$name" = ours-global ]; then
        curl -s "http://127.0.0.1:$SRV_ADMIN/metrics" | grep -E '^webprom_edge_global_limit_' \
          > "$OUT/raw/$profile-ours-global-metrics.r$round.txt" || true
      fi
      # The first lines of each access log of a profile (anonymised by the server itself).
      # shellcheck disable=SC2086
      [ -s "$OUT/raw/logsample-$profile-$name.txt" ] || cat $SRV_LOG 2>/dev/null | head -n 3 \
        | cut -c1-1500 > "$OUT/raw/logsample-$profile-$name.txt"
      stop_target
    done
  done
done

echo "load average at end: $(cat /proc/loadavg)" >> "$OUT/env.txt"
python3 "$HERE/report.py" summary "$OUT" --noisy-pct "$NOISY_PCT" | tee "$OUT/summary.txt"
