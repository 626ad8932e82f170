#!/usr/bin/env bash
# The crash loop of tests/e2e/crash.rs, long: KILLS kills (default 100) of the real broker at
# random moments while QoS 1 and QoS 2 publishers send to a persistent subscriber; every
# acknowledged message must arrive (QoS 2 exactly once). CRASH_SEED=... replays a run.
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-100}
CRASH_KILLS=$KILLS cargo test --release -p tessera --test e2e \
    crash::every_acknowledged_message_survives_kill_9_at_random_moments -- --exact --nocapture
