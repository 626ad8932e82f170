#!/usr/bin/env bash
# Cost curves (issue 23): what Tessera's state costs as it grows to 10k, 100k and 1M entries,
# against mosquitto loading the same, and writes the table under "## Cost curves (issue 23)"
# in docs/benchmarks.md, then its chart (docs/charts/scale.svg).
#   - offline persistent sessions (one subscription each): memory per session, restart time to
#     serving, and (Tessera) a /metrics scrape;
#   - retained topics: memory per topic, a `#` subscriber's catch-up;
#   - subscriptions: matching a PUBLISH's topic; tokens in the store: validating one, issuing
#     one, `token list`'s first page (benches/benches/scale.rs, in process).
# Each broker pinned to CPU 0, the load generator to CPU 1; one round per size (the curves'
# shape is the point, and a 1M fill takes minutes). Usage: benches/scale.sh; SIZES="10000
# 100000" for a shorter run (the in-process curves then stop at the largest too);
# NO_WRITE=1 prints the table without writing the document.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-10000 100000 1000000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p tessera -p tessera-bench
BIN=$PWD/target/release
WORK=$(mktemp -d)
RESULTS=$WORK/results.jsonl
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
LG() { taskset -c 1 "$BIN/loadgen" --addr "127.0.0.1:$PORT" --run "r$RANDOM" "$@"; }
result() { echo "$1" >&2; echo "$1" >>"$RESULTS"; }

# Each start_* (re)starts the broker on the state in $WORK/<broker>: sets PID (and METRICS).
start_tessera() {
  local d=$WORK/tessera
  if [ ! -f "$d/t.yml" ]; then
    mkdir -p "$d"
    METRICS=$(free_port)
    cat > "$d/t.yml" <<YML
data_dir: $d/data
listeners:
  - type: tcp
    bind: 127.0.0.1:$PORT
oauth:
  bind: 127.0.0.1:0
metrics:
  bind: 127.0.0.1:$METRICS
sys:
  interval: 0
auth:
  allow_anonymous: true
mqtt:
  max_connections: 1000000
  max_retained_messages: 2000000
storage:
  durability: durable
log:
  level: warn
YML
  fi
  taskset -c 0 "$BIN/tessera" -c "$d/t.yml" serve 2>>"$d/log" & PID=$!; PIDS+=("$PID")
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
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }
fresh() { PORT=$(free_port); rm -rf "${WORK:?}/$1"; "start_$1"; LG ready --timeout 60 >/dev/null; }
# The median of 9 scrapes of /metrics, in milliseconds.
scrape_ms() {
  for _ in $(seq 9); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$METRICS/metrics"; done |
    sort -n | awk '{v[NR] = $1} END {printf "%.3f", v[5] * 1000}'
}

for n in $SIZES; do
  for b in tessera mosquitto; do
    # Offline persistent sessions: memory each, then the restart that loads them.
    fresh "$b"
    base=$(rss_kib "$PID")
    fill=$(LG fill --retained 0 --sessions "$n")
    rss=$(rss_kib "$PID")
    scrape=null
    if [ "$b" = tessera ]; then scrape=$(scrape_ms); fi
    stop
    "start_$b"
    ready=$(LG ready --timeout 900 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms"])')
    stop
    result "{\"broker\":\"$b\",\"what\":\"sessions\",\"n\":$n,\"bytes_each\":$(( (rss - base) * 1024 / n )),\"restart_ms\":$ready,\"scrape_ms\":$scrape,\"fill\":$fill}"
    # Retained topics: memory each and a `#` subscriber's catch-up.
    fresh "$b"
    base=$(rss_kib "$PID")
    ret=$(LG retained --topics "$n")
    rss=$(rss_kib "$PID")
    stop
    result "{\"broker\":\"$b\",\"what\":\"retained\",\"n\":$n,\"bytes_each\":$(( (rss - base) * 1024 / n )),\"run\":$ret}"
  done
done

# The in-process curves, up to the largest size asked for.
max=$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -1)
SCALE_MAX=$max cargo bench -q -p tessera-bench --bench scale 2>"$WORK/bench.err" | tee "$WORK/divan.txt" >&2
grep '^token ' "$WORK/bench.err" >>"$WORK/divan.txt" || true

python3 - "$RESULTS" "$WORK/divan.txt" <<'PY'
import json, os, re, sys
from pathlib import Path

rows = [json.loads(l) for l in open(sys.argv[1])]
UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
micro, bench = {}, None
for line in open(sys.argv[2]):
    m = re.match(r"^[│├╰\s─]*([a-z_]+)\s+│", line)
    if m:
        bench = m.group(1)
        continue
    m = re.match(r"^token store: (\d+) tokens, (\d+) bytes", line)
    if m:
        micro[("token_disk", int(m.group(1)))] = int(m.group(2)) / int(m.group(1))
        continue
    m = re.match(r"^token validation p99: (\d+) tokens, (\d+) ns", line)
    if m:
        micro[("validate_p99", int(m.group(1)))] = int(m.group(2)) / 1000
        continue
    m = re.match(r"^[│├╰\s─]*(\d+)\s+(.*)$", line)
    if m and bench:
        cells = [c.strip() for c in m.group(2).split("│")]
        value, unit = cells[2].split()  # the median
        micro[(bench, int(m.group(1)))] = float(value) * UNITS[unit]

sizes = sorted({r["n"] for r in rows} | {n for _, n in micro})
def label(n):
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
def get(b, what, key):
    out = {}
    for r in rows:
        if r["broker"] == b and r["what"] == what:
            v = r[key] if key in r else r["run"].get(key)
            if key == "seconds" and not r["run"].get("complete"):
                v = None
            out[r["n"]] = v
    return out
def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"

figures = []
for b in ["tessera", "mosquitto"]:
    figures.append((f"offline session memory (bytes) — {b}", get(b, "sessions", "bytes_each")))
for b in ["tessera", "mosquitto"]:
    figures.append((f"restart to serving (ms) — {b}", get(b, "sessions", "restart_ms")))
figures.append(("/metrics scrape (ms) — tessera", get("tessera", "sessions", "scrape_ms")))
for b in ["tessera", "mosquitto"]:
    figures.append((f"retained topic memory (bytes) — {b}", get(b, "retained", "bytes_each")))
for b in ["tessera", "mosquitto"]:
    figures.append((f"# subscriber catch-up (s) — {b}", get(b, "retained", "seconds")))
for name, bench in [("subscription match per PUBLISH (us)", "match_topic"),
                    ("token validation (us)", "validate_token"),
                    ("token validation p99 (us)", "validate_p99"),
                    ("token issuance, durable (us)", "issue_token"),
                    ("token list, first page of 1,000 (us)", "token_list_first_page"),
                    ("token revoke --user, one token among all (us)", "revoke_user_with_one_token"),
                    ("token store on disk (bytes per token)", "token_disk")]:
    figures.append((f"{name} — tessera", {n: micro.get((bench, n)) for n in sizes}))

table = ["| figure | " + " | ".join(label(n) for n in sizes) + " |",
         "|---|" + "---|" * len(sizes)]
for name, values in figures:
    table.append(f"| {name} | " + " | ".join(fmt(values.get(n)) for n in sizes) + " |")
text = "\n".join(table)
print(text)
if os.environ.get("NO_WRITE") == "1":
    sys.exit(0)
doc = Path("docs/benchmarks.md")
body = doc.read_text()
begin, end = "<!-- scale:begin -->", "<!-- scale:end -->"
if begin not in body:
    sys.exit(f"{doc}: no {begin} marker under '## Cost curves (issue 23)'")
head, rest = body.split(begin, 1)
_, tail = rest.split(end, 1)
from datetime import date
doc.write_text(f"{head}{begin}\nMeasured {date.today()} with `benches/scale.sh` (sizes: "
               f"{', '.join(label(n) for n in sizes)}).\n\n{text}\n{end}{tail}")
print(f"wrote {doc}")
PY
[ "${NO_WRITE:-0}" = 1 ] || python3 benches/charts.py
