#!/usr/bin/env bash
# Fuzzes Tessera's input surfaces with cargo-fuzz (libFuzzer, nightly toolchain): each target
# runs RUNS executions (default 10 million) from its corpus in fuzz/corpus/<target>, which it
# grows; then the corpus is minimized (cargo fuzz cmin) so the repository keeps it small. A crash
# is written to fuzz/artifacts/<target>/: fix it, then copy the input to
# fuzz/regressions/<target>/, where the normal test suite replays it (broker/tests/fuzz_corpus.rs,
# auth/tests/fuzz_corpus.rs). Prints one summary line per target: executions, seconds, coverage
# (libFuzzer's cov/ft), corpus size.
#   scripts/fuzz.sh                    # every target, 10M executions each
#   RUNS=100000 scripts/fuzz.sh decode # one target, fewer executions
# SANITIZER=none runs without AddressSanitizer (4x faster on a large target such as config;
# the crates forbid unsafe code, so ASAN watches only their dependencies' unsafe code);
# FUZZ_ARGS adds libFuzzer options.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS=${RUNS:-10000000}
SANITIZER=${SANITIZER:-address}
read -r -a EXTRA <<<"${FUZZ_ARGS:-}"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(decode connection config oauth_form x_oauth2)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    start=$(date +%s)
    status=0
    cargo +nightly fuzz run -O -s "$SANITIZER" "$t" "corpus/$t" -- -runs="$RUNS" -timeout=20 \
        -rss_limit_mb=4096 "${EXTRA[@]}" >"$log" 2>&1 || status=$?
    secs=$(( $(date +%s) - start ))
    stats=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "$t: FAILED after ${secs}s (status $status); the input is in fuzz/artifacts/$t/"
        exit 1
    fi
    cargo +nightly fuzz cmin -O -s "$SANITIZER" "$t" "corpus/$t" >/dev/null 2>&1
    echo "$t ($SANITIZER): $RUNS runs in ${secs}s; last: $stats; corpus $(ls "corpus/$t" | wc -l) files"
    rm -f "$log"
done
