#!/usr/bin/env bash
# TLS figures (docs/benchmarks.md, "TLS and client certificates"): Tessera and mosquitto in the
# same run, alternating round by round, broker pinned to CPU 0 and load generator to CPU 1.
#   - whole TLS handshakes (no session resumption) + CONNECT + CONNACK + DISCONNECT per
#     second, without client certificates and with `required` client certificates (mosquitto:
#     `require_certificate true`); the broker's CPU time per handshake;
#   - messages delivered per second by 4 publisher/subscriber pairs streaming 64-byte QoS 0
#     messages over TLS (the record layer's cost);
#   - idle memory of a connection with a client certificate (broker RSS growth per connection).
# BEFORE=<a tessera binary> adds it as a third broker, for before/after figures of a change.
# The PKI (a CA, the server's certificate for localhost, a device certificate; ECDSA P-256) is
# made with openssl in a temporary directory.
# Usage: benches/tls.sh [ROUNDS] (default 3); CLIENTS=2000 handshakes per run, IDLE=5000.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CLIENTS=${CLIENTS:-2000}
IDLE=${IDLE:-5000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v mosquitto >/dev/null || { echo "mosquitto not found: apt-get install mosquitto" >&2; exit 1; }

cargo build --release -q -p tessera -p tessera-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
RESULTS=$WORK/results.jsonl
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The PKI.
P=$WORK/pki; mkdir -p "$P"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key "$P/ca.key"
openssl req -x509 -new -key "$P/ca.key" -out "$P/ca.pem" -days 30 -subj /CN=bench-ca 2>/dev/null
issue() { # name subject extensions
  key "$P/$1.key"
  openssl req -new -key "$P/$1.key" -out "$P/$1.csr" -subj "$2" 2>/dev/null
  printf '%s\n' "$3" > "$P/$1.ext"
  openssl x509 -req -in "$P/$1.csr" -CA "$P/ca.pem" -CAkey "$P/ca.key" -CAcreateserial \
    -out "$P/$1.pem" -days 30 -extfile "$P/$1.ext" 2>/dev/null
}
issue server /CN=localhost "subjectAltName=DNS:localhost,IP:127.0.0.1"
issue device /CN=bench-device "extendedKeyUsage=clientAuth"
# mosquitto drops to its own user when started as root: let it read its files.
chmod 755 "$WORK" "$P"; chmod 644 "$P"/*

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }

start_tessera() { # mode: none | required
  PORT=$(free_port); local d=$WORK/tessera; rm -rf "$d"; mkdir -p "$d"
  local client=""
  [ "$1" = required ] && client="    client_certificates: required
    client_ca: $P/ca.pem"
  cat > "$d/t.yml" <<YML
data_dir: $d/data
listeners:
  - type: tls
    bind: 127.0.0.1:$PORT
    certificate: $P/server.pem
    private_key: $P/server.key
$client
oauth:
  enabled: false
metrics:
  enabled: false
sys:
  interval: 0
auth:
  allow_anonymous: true
mqtt:
  max_connections: 1000000
storage:
  durability: none
log:
  level: warn
YML
  taskset -c 0 "${TESSERA:-$BIN/tessera}" -c "$d/t.yml" serve 2>"$d/log" & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
}
start_mosquitto() { # mode: none | required
  PORT=$(free_port); local d=$WORK/mosquitto; rm -rf "$d"; mkdir -p "$d"; chmod 755 "$d"
  cat > "$d/m.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
cafile $P/ca.pem
certfile $P/server.pem
keyfile $P/server.key
max_queued_messages 1000
persistence false
log_dest stderr
CONF
  [ "$1" = required ] && echo "require_certificate true" >> "$d/m.conf"
  taskset -c 0 mosquitto -c "$d/m.conf" 2>"$d/log" & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
}
start_before() { TESSERA=$BEFORE start_tessera "$1"; }
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
LG() { timeout 300 taskset -c 1 "$BIN/loadgen" --addr "127.0.0.1:$PORT" --tls-ca "$P/ca.pem" "$@"; }
record() { python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["broker"]=sys.argv[1]; d["label"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" "$3" >> "$RESULTS"; }
DEVICE=(--tls-cert "$P/device.pem" --tls-key "$P/device.key")

BROKERS=(tessera mosquitto); [ -n "${BEFORE:-}" ] && BROKERS+=(before)
for round in $(seq "$ROUNDS"); do
  # Each round starts with the next broker, so none always runs first.
  k=$(( (round - 1) % ${#BROKERS[@]} ))
  ORDER=("${BROKERS[@]:k}" "${BROKERS[@]:0:k}")
  for b in "${ORDER[@]}"; do
    echo "round $round: $b" >&2
    "start_$b" none
    out=$(LG tls-handshakes --clients "$CLIENTS" --pid "$PID") && record "$b" tls "$out"
    stop
    "start_$b" none
    out=$(LG tls-stream --pairs 4 --payload 64 --secs 5) && record "$b" stream "$out"
    stop
    "start_$b" required
    out=$(LG "${DEVICE[@]}" tls-handshakes --clients "$CLIENTS" --pid "$PID") && record "$b" mtls "$out"
    stop
    "start_$b" required
    out=$(LG "${DEVICE[@]}" tls-idle --connections "$IDLE" --pid "$PID") && record "$b" mtls_idle "$out"
    stop
  done
done

python3 - "$RESULTS" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
metrics = [
    ("tls", "handshakes_per_sec", "TLS handshakes, no client certificate (per s)"),
    ("mtls", "handshakes_per_sec", "TLS handshakes, client certificate required (per s)"),
    ("tls", "handshakes_per_broker_cpu_sec", "  per broker CPU-second, no client certificate"),
    ("mtls", "handshakes_per_broker_cpu_sec", "  per broker CPU-second, client certificate"),
    ("tls", "p99_us", "  p99, no client certificate (us)"),
    ("mtls", "p99_us", "  p99, client certificate (us)"),
    ("stream", "msgs_per_sec", "QoS 0 messages delivered over TLS, 4 pairs, 64 B (per s)"),
    ("mtls_idle", "kib_per_connection", "idle memory of an mTLS connection (KiB)"),
]
def med(b, label, key):
    v = [r[key] for r in rows if r["broker"] == b and r["label"] == label and r.get(key) is not None]
    return statistics.median(v) if v else None
before = any(r["broker"] == "before" for r in rows)
head = "| figure | tessera | mosquitto | tessera/mosquitto |"
print(head + (" before | tessera/before |" if before else ""))
print("|---|---|---|---|" + ("---|---|" if before else ""))
fmt = lambda x: "-" if x is None else (f"{x:.1f}" if x < 100 else f"{x:.0f}")
ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
for label, key, name in metrics:
    t, m = med("tessera", label, key), med("mosquitto", label, key)
    line = f"| {name} | {fmt(t)} | {fmt(m)} | {ratio(t, m)} |"
    if before:
        b = med("before", label, key)
        line += f" {fmt(b)} | {ratio(t, b)} |"
    print(line)
print(f"\nrounds: {sys.argv[2]} | medians")
PY
