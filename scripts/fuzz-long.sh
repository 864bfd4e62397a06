#!/usr/bin/env bash
# The long fuzz run (issue 12 §6): every property-based fuzz test, each with CASES generated
# inputs (default 10 000 000), in the `fuzz` profile (optimised, overflow checks on).
#
#   scripts/fuzz-long.sh                  # 10 million inputs per property, one at a time
#   scripts/fuzz-long.sh 100000           # a quicker pass
#   JOBS=2 scripts/fuzz-long.sh           # two properties at a time
#   scripts/fuzz-long.sh 10000000 authority   # only the properties whose name holds "authority"
#
# The properties: every test of tests/fuzz.rs (user agent and Client Hints, Accept-Language,
# X-Forwarded-For and Forwarded, the field-list reader, the path, the authority, the request-head
# checks, the config loader), the cookie cap's (tests/cookies.rs) and the investigation reader's
# (src/investigate.rs). Prints one line per property (result, inputs, seconds, inputs per
# second); each property's output, with the failing input if any, is in target/fuzz-long/.
# Exits non-zero if any property failed.
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${1:-10000000}
filter=${2:-}
jobs=${JOBS:-1}
out=target/fuzz-long
mkdir -p "$out"

if [[ ${1:-} == --one ]]; then
    # Internal: run one property ($2: cases, $3: cargo target flags, $4: test name).
    cases=$2
    read -r -a target <<<"$3"
    name=$4
    log="$out/${name//::/-}.log"
    start=$(date +%s.%N)
    if PROPTEST_CASES=$cases cargo test -q --profile fuzz "${target[@]}" -- --exact "$name" \
        --test-threads=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
    fi
    end=$(date +%s.%N)
    awk -v r="$result" -v n="$name" -v c="$cases" -v s="$start" -v e="$end" 'BEGIN {
        t = e - s; printf "%-6s %-80s %10d inputs %9.1f s %10.0f/s\n", r, n, c, t, c / t }'
    [[ $result == ok ]]
    exit
fi

echo "building the fuzz profile (optimised, overflow checks on)..." >&2
cargo test -q --profile fuzz --test fuzz --test cookies --lib --no-run

properties() {
    cargo test -q --profile fuzz --test fuzz -- --list 2>/dev/null |
        sed -n 's/: test$//p' | sed 's/^/--test fuzz\t/'
    cargo test -q --profile fuzz --test cookies -- --list 2>/dev/null |
        sed -n 's/: test$//p' | grep -E '^(lifetime_after_the_cap_is_never_longer_for_(structured_lines|arbitrary_bytes)|the_response_cap_)' |
        sed 's/^/--test cookies\t/'
    cargo test -q --profile fuzz --lib -- --list 2>/dev/null |
        sed -n 's/: test$//p' | grep '^investigate::tests::fuzz::' | sed 's/^/--lib\t/'
}

# xargs exits non-zero when any property failed.
properties | grep -F -- "$filter" | tr '\t' '\n' |
    xargs -d '\n' -n 2 -P "$jobs" "$0" --one "$cases"
