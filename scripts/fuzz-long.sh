#!/usr/bin/env bash
# The long fuzz run (issue 12 §6): every property-based fuzz test, each with CASES generated
# inputs (default 10 000 000), in the `fuzz` profile (optimised, overflow checks on).
#
#   scripts/fuzz-long.sh                      # 10 million inputs per property, one at a time
#   scripts/fuzz-long.sh 100000               # a quicker pass
#   JOBS=2 scripts/fuzz-long.sh               # two properties at a time
#   scripts/fuzz-long.sh 10000000 authority   # only the properties whose name holds "authority"
#
# The properties: every test of tests/fuzz.rs (user agent and Client Hints, Accept-Language,
# X-Forwarded-For and Forwarded, the field-list reader, the path, the authority, the request-head
# checks, the config loader), the cookie cap's (tests/cookies.rs) and the investigation reader's
# (src/accesslog/reader.rs). The test binaries are built once, then run directly, so the sources may
# change while a run goes on. Prints one line per property (result, inputs, seconds, inputs per
# second); each property's output, with the failing input if any, is in target/fuzz-long/.
# Exits non-zero if any property failed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/fuzz-long

if [[ ${1:-} == --one ]]; then
    # Internal: run one property ($2: cases, $3: test binary, $4: test name).
    cases=$2 binary=$3 name=$4
    log="$out/${name//::/-}.log"
    start=$(date +%s.%N)
    if PROPTEST_CASES=$cases "$binary" --exact "$name" --test-threads=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
    fi
    end=$(date +%s.%N)
    if [[ $result == FAILED ]]; then
        # Inputs that passed before the failing one (proptest's "successes: N").
        cases=$(sed -n 's/^[[:space:]]*successes: \([0-9]*\)$/\1/p' "$log" | head -n 1)
        cases=$((${cases:-0} + 1))
    fi
    awk -v r="$result" -v n="$name" -v c="$cases" -v s="$start" -v e="$end" 'BEGIN {
        t = e - s; printf "%-6s %-80s %10d inputs %9.1f s %10.0f/s\n", r, n, c, t, c / t }'
    [[ $result == ok ]]
    exit
fi

cases=${1:-10000000}
filter=${2:-}
jobs=${JOBS:-1}
mkdir -p "$out"

echo "building the fuzz profile (optimised, overflow checks on)..." >&2
# The test binaries, by the source they test ("tests/fuzz.rs", "tests/cookies.rs" and
# "unittests src/lib.rs"), as cargo lists them: "Executable <source> (<path>)".
declare -A binary
while IFS=$'\t' read -r source path; do
    binary[$source]=$path
done < <(cargo test --profile fuzz --test fuzz --test cookies --lib --no-run 2>&1 |
    sed -n 's/^ *Executable \(.*\) (\(.*\))$/\1\t\2/p')

# "binary<TAB>test name" for every property.
properties() {
    "${binary[tests/fuzz.rs]}" --list 2>/dev/null | sed -n 's/: test$//p' |
        sed "s|^|${binary[tests/fuzz.rs]}\t|"
    "${binary[tests/cookies.rs]}" --list 2>/dev/null | sed -n 's/: test$//p' |
        grep -E '^(lifetime_after_the_cap_is_never_longer_for_(structured_lines|arbitrary_bytes)|the_response_cap_)' |
        sed "s|^|${binary[tests/cookies.rs]}\t|"
    "${binary[unittests src/lib.rs]}" --list 2>/dev/null | sed -n 's/: test$//p' |
        grep '^accesslog::reader::tests::fuzz::' | sed "s|^|${binary[unittests src/lib.rs]}\t|"
}

# xargs exits non-zero when any property failed.
properties | awk -F '\t' -v f="$filter" 'index($2, f)' | tr '\t' '\n' |
    xargs -d '\n' -n 2 -P "$jobs" "$0" --one "$cases"
