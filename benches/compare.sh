#!/usr/bin/env bash
# Runs the benchmark scenarios against Tessera, mosquitto and rumqttd (if installed) on loopback,
# alternating brokers round by round, broker pinned to CPU 0 and load generator to CPU 1, and
# prints a table of medians with the ratio Tessera/peer. Also measures the raw relay ceiling for
# fan-in. Usage: benches/compare.sh [ROUNDS] (default 3). QUICK=1 shortens every scenario;
# SCENARIOS="fanout storm" runs only those (of: fanin0_64 fanin0_1k fanin1_64 pairs_flat pairs_1k
# fanout storm idle retained relay, and fanin1_persist / pairs_1k_persist: the QoS 1 scenarios
# with persistent-session subscribers, whose messages Tessera stores durably and mosquitto
# with `persistence true`). VOLATILE=1 adds Tessera with `storage.durability: none` as the
# broker "volatile". BEFORE=path/to/an/older/tessera adds that build as the broker
# "before", run the same way in the same rounds, for before/after figures of a change;
# ONLY="tessera before" runs just those brokers. STORM and STORM_CONCURRENCY size the storm;
# STORM_TOKENS=1 gives each of Tessera's storm clients a token of its own (issued through the
# admin socket before the storm), as a fleet's devices have.
#   Peers: Debian's mosquitto (apt-get install mosquitto), rumqttd (cargo install rumqttd,
#   outside this repository; found on PATH or in /opt/rumqttd/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${SECS:-5}
IDLE=${IDLE:-10000}
RETAINED=${RETAINED:-100000}
STORM=${STORM:-5000}
# Clients connecting at once (each disconnects after its CONNACK and, below the total, connects
# again); STORM=19000 STORM_CONCURRENCY=19000 is a fleet reconnecting together after an outage.
STORM_CONCURRENCY=${STORM_CONCURRENCY:-32}
SCENARIOS=${SCENARIOS:-fanin0_64 fanin0_1k fanin1_64 fanin1_persist pairs_flat pairs_1k pairs_1k_persist fanout storm idle retained relay}
if [ "${QUICK:-0}" = 1 ]; then SECS=1; IDLE=1000; RETAINED=10000; STORM=300; fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p tessera -p tessera-bench
BIN=$PWD/target/release
RUMQTTD=$(command -v rumqttd || ls /opt/rumqttd/bin/rumqttd 2>/dev/null || true)
WORK=$(mktemp -d)
RESULTS=$WORK/results.jsonl
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; cat "$WORK"/*/log >&2 2>/dev/null; return 1; }

# Each start_* sets PORT, PID and LOGIN (loadgen arguments for the connect storm).
start_tessera() { start_tessera_build "$BIN/tessera" tessera "storage: {durability: durable}"; }
start_volatile() { start_tessera_build "$BIN/tessera" volatile "storage: {durability: none}"; }
# An older build may not know the storage section: it runs on its own defaults.
start_before() { start_tessera_build "$BEFORE" before ""; }
start_tessera_build() { # binary name storage-line
  local tessera=$1
  PORT=$(free_port); local d=$WORK/$2; rm -rf "$d"; mkdir -p "$d"
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
log:
  level: warn
$3
YML
  echo benchpass | "$tessera" -c "$d/t.yml" user add bench >/dev/null
  local token; token=$("$tessera" -c "$d/t.yml" --json token issue bench --ttl 86400 | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  taskset -c 0 "$tessera" -c "$d/t.yml" serve 2>"$d/log" & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
  LOGIN=(--mqtt 5 "--token=$token")
  if [ "$SCEN" = storm ] && [ -n "${STORM_TOKENS:-}" ]; then
    python3 - "$d/data/run/admin.sock" "$STORM" > "$d/tokens" <<'PY'
import json, socket, sys
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"cmd": "token_issue", "user": "bench", "ttl": 86400, "scopes": []}).encode() + b"\n")
    print(json.loads(s.makefile("rb").readline())["data"]["access_token"])
    s.close()
PY
    LOGIN=(--mqtt 5 "--tokens=$d/tokens")
  fi
}
start_mosquitto() {
  PORT=$(free_port); local d=$WORK/mosquitto; rm -rf "$d"; mkdir -p "$d"
  mosquitto_passwd -b -c "$d/passwd" bench benchpass 2>/dev/null
  # Started as root, mosquitto drops to user mosquitto: let it read its files.
  chmod 755 "$WORK" "$d"; chmod 644 "$d/passwd"
  cat > "$d/m.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
password_file $d/passwd
max_queued_messages 1000
max_inflight_messages 0
log_dest stderr
CONF
  # The persistent-session scenarios compare against mosquitto keeping its state too.
  case $SCEN in
    *_persist) printf 'persistence true\npersistence_location %s/\n' "$d" >> "$d/m.conf"; chmod 777 "$d" ;;
    *) echo "persistence false" >> "$d/m.conf" ;;
  esac
  taskset -c 0 mosquitto -c "$d/m.conf" 2>"$d/log" & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
  LOGIN=("--password=bench:benchpass")
}
start_rumqttd() {
  PORT=$(free_port); local d=$WORK/rumqttd; rm -rf "$d"; mkdir -p "$d"
  cat > "$d/r.toml" <<TOML
id = 0
[router]
id = 0
max_connections = 1000010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
TOML
  taskset -c 0 "$RUMQTTD" -c "$d/r.toml" -q >/dev/null 2>&1 & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
  LOGIN=()
}
start_relay() {
  PORT=$(free_port)
  taskset -c 0 "$BIN/relay" "127.0.0.1:$PORT" 2>/dev/null & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
  LOGIN=()
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }

LG() { timeout 300 taskset -c 1 "$BIN/loadgen" --addr "127.0.0.1:$PORT" --run "r$RANDOM" "$@"; }

record() { # broker scenario-label json
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["broker"]=sys.argv[1]; d["label"]=sys.argv[2]; print(json.dumps(d))' "$1" "$2" "$3" >> "$RESULTS"
}

run_broker() {
  local b=$1
  # Each scenario on a fresh broker, so none inherits another's state.
  local scen
  for scen in $SCENARIOS; do
    [ "$scen" = relay ] && continue
    # rumqttd keeps no state across restarts: nothing to compare there.
    case "$b:$scen" in rumqttd:*_persist) continue ;; esac
    SCEN=$scen
    "start_$b"
    local out=""
    case $scen in
      fanin0_64) out=$(LG fan-in --publishers 8 --qos 0 --payload 64 --secs "$SECS") ;;
      fanin0_1k) out=$(LG fan-in --publishers 8 --qos 0 --payload 1024 --secs "$SECS") ;;
      fanin1_64) out=$(LG fan-in --publishers 8 --qos 1 --payload 64 --secs "$SECS") ;;
      fanin1_persist) out=$(LG --persistent fan-in --publishers 8 --qos 1 --payload 64 --secs "$SECS") ;;
      pairs_flat) out=$(LG pairs --pairs 8 --secs "$SECS") ;;
      pairs_1k) out=$(LG pairs --pairs 8 --rate 1000 --secs "$SECS") ;;
      pairs_1k_persist) out=$(LG --persistent pairs --pairs 8 --rate 1000 --secs "$SECS") ;;
      fanout) out=$(LG fan-out --subscribers 1000 --payload 64 --secs "$SECS") ;;
      storm) out=$(LG "${LOGIN[@]}" connect-storm --clients "$STORM" --concurrency "$STORM_CONCURRENCY" --pid "$PID") ;;
      idle) out=$(LG idle --connections "$IDLE" --pid "$PID") ;;
      retained) out=$(LG retained --topics "$RETAINED") ;;
    esac || true
    [ -n "$out" ] && record "$b" "$scen" "$out"
    stop
  done
}

BROKERS=(tessera mosquitto)
[ -n "$RUMQTTD" ] && BROKERS+=(rumqttd)
[ -n "${BEFORE:-}" ] && BROKERS+=(before)
[ "${VOLATILE:-0}" = 1 ] && BROKERS+=(volatile)
# ONLY="tessera before" limits the brokers (for a quick before/after).
[ -n "${ONLY:-}" ] && read -r -a BROKERS <<< "$ONLY"
for round in $(seq "$ROUNDS"); do
  # Alternate the order round by round.
  if [ $((round % 2)) = 0 ]; then ORDER=("$(printf '%s\n' "${BROKERS[@]}" | tac)"); ORDER=($ORDER); else ORDER=("${BROKERS[@]}"); fi
  for b in "${ORDER[@]}"; do
    [ "$b" = rumqttd ] && [ "${SKIP_RUMQTTD:-0}" = 1 ] && continue
    echo "round $round: $b" >&2
    run_broker "$b"
  done
  case " $SCENARIOS " in *" relay "*)
    start_relay
    out=$(LG fan-in --publishers 8 --qos 0 --payload 64 --secs "$SECS") && record relay fanin0_64 "$out"
    out=$(LG fan-in --publishers 8 --qos 0 --payload 1024 --secs "$SECS") && record relay fanin0_1k "$out"
    # The floor of a connection's cost: TCP accept, CONNECT in, CONNACK out, close.
    out=$(LG connect-storm --clients "$STORM" --pid "$PID") && record relay storm "$out"
    stop ;;
  esac
done

python3 - "$RESULTS" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
metrics = [
    ("fanin0_64", "msgs_per_sec", "fan-in QoS 0, 64 B (msgs/s)", True),
    ("fanin0_1k", "msgs_per_sec", "fan-in QoS 0, 1 KiB (msgs/s)", True),
    ("fanin1_64", "msgs_per_sec", "fan-in QoS 1, 64 B (msgs/s)", True),
    ("pairs_flat", "msgs_per_sec", "pairs QoS 1 flat out (msgs/s)", True),
    ("pairs_flat", "p99_us", "pairs QoS 1 flat out p99 (us)", False),
    ("pairs_1k", "p50_us", "pairs QoS 1 @1k/s p50 (us)", False),
    ("pairs_1k", "p99_us", "pairs QoS 1 @1k/s p99 (us)", False),
    ("pairs_1k", "p999_us", "pairs QoS 1 @1k/s p99.9 (us)", False),
    ("fanin1_persist", "msgs_per_sec", "fan-in QoS 1, 64 B, persistent subscriber (msgs/s)", True),
    ("pairs_1k_persist", "ack_p50_us", "pairs QoS 1 @1k/s persistent: PUBLISH to PUBACK p50 (us)", False),
    ("pairs_1k_persist", "ack_p99_us", "pairs QoS 1 @1k/s persistent: PUBLISH to PUBACK p99 (us)", False),
    ("pairs_1k_persist", "p99_us", "pairs QoS 1 @1k/s persistent: end to end p99 (us)", False),
    ("fanout", "deliveries_per_sec", "fan-out 1000 subs QoS 0 (deliveries/s)", True),
    ("storm", "connacks_per_sec", "connect storm (CONNACKs/s)", True),
    ("storm", "p99_us", "connect storm p99 (us)", False),
    ("storm", "connacks_per_broker_cpu_sec", "connect capacity (CONNACKs per broker CPU-second)", True),
    ("idle", "kib_per_connection", "idle memory (KiB/connection)", False),
    ("retained", "seconds", "100k retained to a # subscriber (s; * = incomplete)", False),
]
brokers = [b for b in ["tessera", "volatile", "before", "mosquitto", "rumqttd", "relay"] if any(r["broker"] == b for r in rows)]
def med(b, label, key):
    v = [r[key] for r in rows if r["broker"] == b and r["label"] == label and r.get(key) is not None]
    return statistics.median(v) if v else None
exact = all(r.get("exact", True) for r in rows)
head = ["figure"] + brokers + [f"tessera/{p}" for p in brokers if p != "tessera"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for label, key, name, higher in metrics:
    vals = {b: med(b, label, key) for b in brokers}
    def fmt(b):
        v = vals[b]
        if v is None:
            return "-"
        s = "%.0f" % v if v >= 100 else "%.2f" % v
        if label == "retained" and any(r["broker"] == b and r["label"] == label and not r.get("complete", True) for r in rows):
            s += "*"
        return s
    cells = [name] + [fmt(b) for b in brokers]
    for p in brokers:
        if p == "tessera":
            continue
        t, o = vals.get("tessera"), vals.get(p)
        # No ratio against a run that did not complete (its figure is only a lower bound).
        incomplete = any(r["broker"] == p and r["label"] == label and not r.get("complete", True) for r in rows)
        cells.append("%.2f" % (t / o) if t and o and not incomplete else "-")
    print("| " + " | ".join(cells) + " |")
print()
print("QoS 1 counts exact in every run:", "yes" if exact else "NO: " + ", ".join(sorted({r["broker"] + "/" + r["label"] for r in rows if not r.get("exact", True)})))
runs = max((sum(1 for r in rows if r["broker"] == "tessera" and r["label"] == l) for l, _, _, _ in metrics), default=0)
print("rounds:", sys.argv[2], "| medians of", runs, "runs per figure")
PY
