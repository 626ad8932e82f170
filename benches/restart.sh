#!/usr/bin/env bash
# Restart with a large state: fills Tessera (durability durable) and mosquitto (persistence
# true) with RETAINED retained topics and SESSIONS persistent sessions (one subscription each),
# stops each gracefully, then starts it again and reports the time until it answers CONNECT,
# its RSS then (and its RSS just after the fill, for comparison), and the size of its state on
# disk. Each broker pinned to CPU 0, the load generator to CPU 1. Usage: benches/restart.sh
# [ROUNDS] (default 1); RETAINED=1000000 SESSIONS=100000 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
RETAINED=${RETAINED:-1000000}
SESSIONS=${SESSIONS:-100000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p tessera -p tessera-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
LG() { taskset -c 1 "$BIN/loadgen" --addr "127.0.0.1:$PORT" --run "r$RANDOM" "$@"; }

start_tessera() {
  local d=$WORK/tessera
  if [ ! -f "$d/t.yml" ]; then
    mkdir -p "$d"
    cat > "$d/t.yml" <<YML
data_dir: $d/data
listeners:
  - type: tcp
    bind: 127.0.0.1:$PORT
oauth:
  bind: 127.0.0.1:0
sys:
  interval: 0
auth:
  allow_anonymous: true
mqtt:
  max_connections: 1000000
storage:
  durability: durable
log:
  level: warn
YML
  fi
  taskset -c 0 "$BIN/tessera" -c "$d/t.yml" serve 2>>"$d/log" & PID=$!; PIDS+=("$PID")
  DISK=$d/data/broker.redb
}
start_mosquitto() {
  local d=$WORK/mosquitto
  if [ ! -f "$d/m.conf" ]; then
    mkdir -p "$d"; chmod 777 "$WORK" "$d"
    cat > "$d/m.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
max_queued_messages 1000
persistence true
persistence_location $d/
autosave_interval 1800
log_dest stderr
CONF
  fi
  taskset -c 0 mosquitto -c "$d/m.conf" 2>>"$d/log" & PID=$!; PIDS+=("$PID")
  DISK=$d/mosquitto.db
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }

for b in tessera mosquitto; do
  PORT=$(free_port)
  rm -rf "${WORK:?}/$b"
  "start_$b"
  LG ready --timeout 60 >/dev/null
  fill=$(LG fill --retained "$RETAINED" --sessions "$SESSIONS")
  filled_rss=$(rss_kib "$PID")
  echo "$b filled: $fill rss_kib=$filled_rss" >&2
  stop
  for round in $(seq "$ROUNDS"); do
    "start_$b"
    ready=$(LG ready --timeout 600)
    rss=$(rss_kib "$PID")
    size=$(du -k "$DISK" | cut -f1)
    echo "$b round $round: $ready rss_kib=$rss disk_kib=$size" >&2
    printf '{"broker":"%s","ready":%s,"rss_kib":%s,"filled_rss_kib":%s,"disk_kib":%s}\n' \
      "$b" "$ready" "$rss" "$filled_rss" "$size"
    stop
  done
done
