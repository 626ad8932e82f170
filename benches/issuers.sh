#!/usr/bin/env bash
# Connect storms with an identity provider's JWTs (docs/benchmarks.md, "Tokens from other
# issuers"), all in one run, alternating round by round, broker pinned to CPU 0 and load
# generator to CPU 1, every client MQTT 5:
#   - Tessera with its own access token (X-OAUTH2),
#   - Tessera with a provider's RS256 JWT and with its ES256 JWT (keys cached: the provider is
#     asked nothing during the storm): one token for every client, as the own-token storm
#     (devices reconnecting with the token they had: the broker's cache of verified tokens),
#     and a token of its own per client (each verified from scratch: first logins),
#   - mosquitto with its password file;
# then one more RS256 storm during which the provider rotates a new key in and a client logs
# in with a token under it (the broker fetches the keys while the storm goes on): the storm
# must end with no failed login (the load generator stops at the first one).
# The provider is oidc-provider (npm ci) on loopback over HTTPS, its certificate made with openssl.
# Usage: benches/issuers.sh [ROUNDS] (default 3); STORM=5000 clients per storm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STORM=${STORM:-5000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v mosquitto >/dev/null || { echo "mosquitto not found: apt-get install mosquitto" >&2; exit 1; }
[ -d node_modules/oidc-provider ] || npm ci --no-audit --no-fund
cargo build --release -q -p tessera -p tessera-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
RESULTS=$WORK/results.jsonl
PIDS=()
IDP_PID=""
cleanup() { for p in "${PIDS[@]:-}" $IDP_PID; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }

# The provider: a certificate for localhost, keys, one client per device kind.
P=$WORK/idp; mkdir -p "$P"
# A CA, and the provider's certificate from it (webpki takes no CA certificate as a server's).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/ca.key" 2>/dev/null
openssl req -x509 -new -key "$P/ca.key" -out "$P/ca.pem" -days 2 -subj /CN=bench-idp-ca 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/key.pem" 2>/dev/null
openssl req -new -key "$P/key.pem" -out "$P/cert.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > "$P/cert.ext"
openssl x509 -req -in "$P/cert.csr" -CA "$P/ca.pem" -CAkey "$P/ca.key" -CAcreateserial \
  -out "$P/cert.pem" -days 2 -extfile "$P/cert.ext" 2>/dev/null
node tests/js/oidc_provider.mjs keys one > "$P/jwks-one.json"
IDP_PORT=$(free_port)
provider_config() { # jwks-file
  cat > "$P/provider.json" <<JSON
{"port": $IDP_PORT, "cert": "$P/cert.pem", "key": "$P/key.pem", "jwks": "$1",
 "clients": [{"client_id": "bench-device", "client_secret": "bench-device-secret-bench-device",
              "grant_types": ["client_credentials"], "redirect_uris": [], "response_types": []}],
 "resources": {"urn:tessera:rs256": {"scope": "mqtt", "audience": "tessera", "format": "jwt", "ttl": 86400, "alg": "RS256"},
               "urn:tessera:es256": {"scope": "mqtt", "audience": "tessera", "format": "jwt", "ttl": 86400, "alg": "ES256"}}}
JSON
}
start_idp() {
  provider_config "$1"
  node tests/js/oidc_provider.mjs serve "$P/provider.json" > "$P/out" 2>/dev/null & IDP_PID=$!
  for _ in $(seq 100); do grep -q ready "$P/out" 2>/dev/null && return 0; sleep 0.1; done
  echo "the provider did not start" >&2; return 1
}
ISSUER=https://localhost:$IDP_PORT
jwt() { # resource
  curl -s --cacert "$P/ca.pem" -u bench-device:bench-device-secret-bench-device "$ISSUER/token" \
    -d grant_type=client_credentials -d scope=mqtt -d resource="$1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
start_idp "$P/jwks-one.json"
RS256=$(jwt urn:tessera:rs256)
ES256=$(jwt urn:tessera:es256)
for alg in RS256 ES256; do
  node tests/js/oidc_provider.mjs mint "$P/jwks-one.json" "$alg" "$ISSUER" tessera bench-device "$STORM" \
    > "$P/many-$alg.txt"
done

start_tessera() {
  PORT=$(free_port); local d=$WORK/tessera; rm -rf "$d"; mkdir -p "$d"
  cat > "$d/t.yml" <<YML
data_dir: $d/data
listeners:
  - type: tcp
    bind: 127.0.0.1:$PORT
oauth:
  bind: 127.0.0.1:0
metrics:
  bind: 127.0.0.1:0
sys:
  interval: 0
mqtt:
  max_connections: 1000000
log:
  level: warn
auth:
  issuers:
    - issuer: $ISSUER
      audience: tessera
      ca: $P/ca.pem
      user_claim: client_id
YML
  echo benchpass | "$BIN/tessera" -c "$d/t.yml" user add bench >/dev/null
  OWN=$("$BIN/tessera" -c "$d/t.yml" --json token issue bench --ttl 86400 | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  taskset -c 0 "$BIN/tessera" -c "$d/t.yml" serve 2>"$d/log" & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
  # The issuer's keys are fetched at start, in the background: wait until one login works.
  for _ in $(seq 100); do
    LG --mqtt 5 "--token=$RS256" connect-storm --clients 1 --concurrency 1 >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no login with the provider's JWT" >&2; cat "$d/log" >&2; return 1
}
start_mosquitto() {
  PORT=$(free_port); local d=$WORK/mosquitto; rm -rf "$d"; mkdir -p "$d"
  mosquitto_passwd -b -c "$d/passwd" bench benchpass 2>/dev/null
  chmod 755 "$WORK" "$d"; chmod 644 "$d/passwd"
  printf 'listener %s 127.0.0.1\nallow_anonymous false\npassword_file %s/passwd\npersistence false\nlog_dest stderr\n' \
    "$PORT" "$d" > "$d/m.conf"
  taskset -c 0 mosquitto -c "$d/m.conf" 2>"$d/log" & PID=$!; PIDS+=("$PID")
  wait_port "$PORT"
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
LG() { timeout 300 taskset -c 1 "$BIN/loadgen" --addr "127.0.0.1:$PORT" "$@"; }
record() { python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; print(json.dumps(d))' "$1" "$2" >> "$RESULTS"; }
storm() { LG --mqtt 5 "$@" connect-storm --clients "$STORM" --pid "$PID"; }

for round in $(seq "$ROUNDS"); do
  echo "round $round" >&2
  if [ $((round % 2)) = 0 ]; then ORDER=(mosquitto tessera); else ORDER=(tessera mosquitto); fi
  for b in "${ORDER[@]}"; do
    "start_$b"
    if [ "$b" = tessera ]; then
      out=$(storm "--token=$OWN") && record own "$out"
      out=$(storm "--token=$RS256") && record rs256 "$out"
      out=$(storm "--token=$ES256") && record es256 "$out"
      # Each token new to the broker: a fresh broker for each, so none is cached.
      stop; start_tessera
      out=$(storm "--tokens=$P/many-RS256.txt") && record rs256_each "$out"
      stop; start_tessera
      out=$(storm "--tokens=$P/many-ES256.txt") && record es256_each "$out"
    else
      out=$(storm --password=bench:benchpass) && record mosquitto "$out"
    fi
    stop
  done
done

# A key rotated in during a storm.
start_tessera
node tests/js/oidc_provider.mjs keys two > "$P/jwks-two.json"
python3 - "$P/jwks-one.json" "$P/jwks-two.json" "$P/jwks-both.json" <<'PY'
import json, sys
keys = json.load(open(sys.argv[1]))["keys"] + json.load(open(sys.argv[2]))["keys"]
json.dump({"keys": keys}, open(sys.argv[3], "w"))
PY
storm "--token=$RS256" > "$WORK/rotation.json" & STORM_PID=$!
sleep 0.5
kill "$IDP_PID"; wait "$IDP_PID" 2>/dev/null || true
# The new key first in the set: the provider signs with it.
python3 - "$P/jwks-both.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["keys"].reverse(); json.dump(d, open(sys.argv[1], "w"))
PY
start_idp "$P/jwks-both.json"
NEW=$(jwt urn:tessera:rs256)
LG --mqtt 5 "--token=$NEW" connect-storm --clients 1 --concurrency 1 > "$WORK/new-key.json"
wait "$STORM_PID" && echo "storm during the rotation: $(cat "$WORK/rotation.json")" \
  || { echo "the storm during the rotation failed" >&2; exit 1; }
KID=$(python3 -c 'import base64,json,sys; h=sys.argv[1].split(".")[0]; print(json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["kid"])' "$NEW")
echo "login under the new key ($KID): $(cat "$WORK/new-key.json")"
METRICS=$(grep -o 'metrics endpoint ready addr=[0-9.:]*' "$WORK/tessera/log" 2>/dev/null || true)
stop

python3 - "$RESULTS" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(label, key):
    v = [r[key] for r in rows if r["label"] == label and r.get(key) is not None]
    return statistics.median(v) if v else None
labels = ["own", "rs256", "es256", "rs256_each", "es256_each", "mosquitto"]
print("| figure | own token | RS256 reconnecting | ES256 reconnecting | RS256 first login | ES256 first login | mosquitto password |")
print("|---|---|---|---|---|---|---|")
fmt = lambda x: "-" if x is None else f"{x:,.0f}"
for key, name in [("connacks_per_sec", "connect storm (CONNACKs/s)"),
                  ("connacks_per_broker_cpu_sec", "CONNACKs per broker CPU-second"),
                  ("p99_us", "connect storm p99 (us)")]:
    print(f"| {name} | " + " | ".join(fmt(med(l, key)) for l in labels) + " |")
own = med("own", "connacks_per_sec")
ratio = lambda l: "-" if own is None or med(l, "connacks_per_sec") is None else f"{med(l, 'connacks_per_sec') / own:.2f}"
print("| rate / own token | " + " | ".join(ratio(l) for l in labels) + " |")
print(f"\nrounds: {sys.argv[2]} | medians")
PY
