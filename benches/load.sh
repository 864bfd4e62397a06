#!/usr/bin/env bash
# The load benchmark of webprom-edge alone, a thin wrapper of benches/edge/run.sh (the
# side-by-side harness, described in BENCHMARKS.md): the keep-alive profile (h2load -c 50 -m 10
# for HTTP/2, wrk -c 50 for HTTP/1.1 over TLS, 1 KiB answers from an nginx upstream) against
# webprom-edge pinned to core 0. Results under target/bench-edge/; options after the variables
# go to run.sh (e.g. --targets ours,nginx,haproxy --profiles keepalive,visitors).
#   benches/load.sh                                  # 20 s per protocol
#   DURATION=60 benches/load.sh
#   GLOBAL=1 ROUNDS=3 DURATION=10 benches/load.sh    # the global rate-limit tier off and on,
#                                                    # interleaved rounds, same run
# Needs what run.sh needs (see its header); with GLOBAL=1 also redis-server, which runs on core 1
# with the upstream and the load generators.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
targets=ours
if [ "${GLOBAL:-0}" = 1 ]; then targets=ours,ours-global; fi
exec "$here/edge/run.sh" --profiles keepalive --targets "$targets" \
  --rounds "${ROUNDS:-1}" --duration "${DURATION:-20}" "$@"
