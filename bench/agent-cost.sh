#!/usr/bin/env bash
# Agent cost: whole-process CPU time per probe and peak RSS of the real agent
# binary running many checks against local targets (plain HTTP, then HTTPS
# with a full handshake per probe), delivering to a real collector; then the
# same figures for Prometheus' blackbox_exporter (Debian's
# prometheus-blackbox-exporter), driven at the same rate (CHECKS probes every
# INTERVAL, evenly spread) against the same targets, and the ratios.
#
#   bench/agent-cost.sh            # 1000 checks every 10 s, 60 s measured
#   CHECKS=200 MEASURE=30 bench/agent-cost.sh
#   AGENT_BIN=/other/vantage-agent bench/agent-cost.sh   # A/B another build
#   AGENT_ONLY=1 bench/agent-cost.sh   # the agent's figures alone (quick A/B)
#   SMAPS=1 bench/agent-cost.sh    # also prints the agent's resident memory by mapping
#   PERF=1 bench/agent-cost.sh     # also profiles the agent (linux-perf) and
#                                  # prints its top functions (binaries built
#                                  # unstripped; figures then not comparable)
#
# Needs PostgreSQL (DATABASE_URL, default the local trust-auth server); uses a
# throwaway database it drops afterwards. Prints figures; asserts nothing.
# The agent resolves shop.test through the fixtures' DNS server at every
# probe; blackbox_exporter is given the address (it would ask the system's
# resolver), so its figures leave the lookup out.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKS=${CHECKS:-1000}
INTERVAL=${INTERVAL:-10s}
BLACKBOX=${BLACKBOX:-/usr/bin/prometheus-blackbox-exporter}
if [ ! -x "$BLACKBOX" ]; then
    echo "agent-cost: $BLACKBOX not found: apt-get install prometheus-blackbox-exporter, or set BLACKBOX" >&2
    exit 1
fi
WARMUP=${WARMUP:-15}
MEASURE=${MEASURE:-60}
BASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=vantage_bench_$$
DB_URL="${BASE_URL%/*}/$DB"

if [ "${PERF:-0}" = 1 ]; then
    export CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
fi
cargo build --release -q --workspace --bins
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
stop_started() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
cleanup() {
    stop_started
    wait 2>/dev/null || true
    psql -q "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$BIN/vantage-fixtures" "$WORK" >"$WORK/fixtures.env" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^CA=' "$WORK/fixtures.env" 2>/dev/null && break; sleep 0.1; done
# shellcheck disable=SC1091
source "$WORK/fixtures.env"

psql -q "$BASE_URL" -c "CREATE DATABASE $DB" >/dev/null
# The collector takes DATABASE_URL over its config file's [database] url:
# unset, it stores into the throwaway database this script counts in.
collector() { env -u DATABASE_URL "$BIN/vantage-collector" "$@"; }
GRPC_PORT=$(free_port)
cat >"$WORK/collector.toml" <<TOML
grpc_listen = "127.0.0.1:$GRPC_PORT"
http_listen = "127.0.0.1:$(free_port)"
[database]
url = "$DB_URL"
TOML
collector migrate --config "$WORK/collector.toml" >/dev/null
# Through env, which becomes the collector: $! is the collector's pid.
RUST_LOG=warn env -u DATABASE_URL "$BIN/vantage-collector" serve --config "$WORK/collector.toml" \
    >"$WORK/collector.log" 2>&1 &
PIDS+=($!)
sleep 1

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
committed() { psql -qtA "$DB_URL" -c "SELECT count(*) FROM probe_results WHERE agent_id = '$1'"; }

run() {
    local scheme=$1 port=$2 extra=$3 agent=bench-$1
    local token
    token=$(collector agent add "$agent" --region bench --config "$WORK/collector.toml" 2>/dev/null)
    {
        printf 'agent_id = "%s"\nregion = "bench"\nmax_concurrent_probes = 64\n' "$agent"
        printf '[collector]\nendpoint = "http://127.0.0.1:%s"\ntoken = "%s"\n' "$GRPC_PORT" "$token"
        printf '[spool]\npath = "%s"\n' "$WORK/$agent.spool"
        printf '[dns]\nresolvers = ["udp://%s"]\n' "$DNS"
        for i in $(seq "$CHECKS"); do
            printf '[[check]]\nname = "c%s"\nurl = "%s://shop.test:%s/c%s"\ninterval = "%s"\ntimeout = "5s"\n%s\n' \
                "$i" "$scheme" "$port" "$i" "$INTERVAL" "$extra"
        done
    } >"$WORK/$agent.toml"
    RUST_LOG=warn "${AGENT_BIN:-$BIN/vantage-agent}" --config "$WORK/$agent.toml" >"$WORK/$agent.log" 2>&1 &
    local pid=$!
    # Stopped by the cleanup too, when anything below fails.
    PIDS+=("$pid")
    sleep "$WARMUP"
    local cpu0 probes0 cpu1 probes1
    cpu0=$(cpu_ticks "$pid"); probes0=$(committed "$agent")
    if [ "${PERF:-0}" = 1 ]; then
        perf record -q -F 499 -g -p "$pid" -o "$WORK/perf-$scheme.data" -- sleep "$MEASURE" 2>/dev/null
    else
        sleep "$MEASURE"
    fi
    cpu1=$(cpu_ticks "$pid"); probes1=$(committed "$agent")
    local hwm rss anon
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status")
    local failed
    failed=$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM probe_results WHERE agent_id = '$agent' AND outcome <> 'ok'")
    if [ "${SMAPS:-0}" = 1 ]; then
        echo "--- agent $scheme: resident kB by mapping" >&2
        awk '/^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6); if ($2 ~ /x/) name = name " (x)"}
             /^Rss:/ {rss[name] += $2}
             END {for (n in rss) if (rss[n] >= 64) printf "%8d %s\n", rss[n], n}' "/proc/$pid/smaps" | sort -rn >&2
    fi
    kill "$pid"; wait "$pid" 2>/dev/null || true
    if [ "${PERF:-0}" = 1 ]; then
        echo "--- agent $scheme: top functions (self, % of samples)" >&2
        # Inclusive (with callees), so that a library's share shows; `head`
        # closing the pipe early is not a failure.
        perf report -i "$WORK/perf-$scheme.data" --children -g none --sort symbol --stdio 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | cut -c1-160 | head -60 >&2 || true
    fi
    python3 - "$scheme" "$cpu0" "$cpu1" "$probes0" "$probes1" "$CLK_TCK" "$hwm" "$rss" "$failed" "$anon" <<'PY'
import sys
scheme, c0, c1, p0, p1, hz, hwm, rss, failed, anon = sys.argv[1:]
cpu_s = (int(c1) - int(c0)) / int(hz)
probes = int(p1) - int(p0)
per = cpu_s * 1e6 / probes if probes else float("nan")
print(f"{scheme:<6} probes {probes:>6}  cpu {cpu_s:6.2f} s  {per:7.1f} us/probe  "
      f"peak RSS {int(hwm)/1024:5.1f} MB  RSS now {int(rss)/1024:5.1f} MB "
      f"(heap and stacks {int(anon)/1024:5.1f} MB)  failed {failed}")
PY
}

# blackbox_exporter at the agent's rate: CHECKS probe requests every
# INTERVAL, evenly spread, each target once per interval; its CPU and the
# probes it answered are counted over the same window as the agent's.
blackbox() {
    local scheme=$1 port=$2 module=$3
    "$BLACKBOX" --config.file="$WORK/blackbox.yml" --web.listen-address="127.0.0.1:$BB_PORT" \
        --log.level=warn >"$WORK/blackbox-$scheme.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$BB_PORT/-/healthy" >/dev/null 2>&1 && break
        sleep 0.1
    done
    python3 - "$scheme" "$pid" "$BB_PORT" "$module" "$scheme://127.0.0.1:$port" "$CHECKS" \
        "${INTERVAL%s}" "$WARMUP" "$MEASURE" "$CLK_TCK" <<'PY'
import http.client, sys, threading, time, urllib.parse
from concurrent.futures import ThreadPoolExecutor
scheme, pid, port, module, base = sys.argv[1:6]
checks, interval, warmup, measure, hz = (float(a) for a in sys.argv[6:11])
checks = int(checks)
local = threading.local()
ok = [0]; failed = [0]; lock = threading.Lock()
def probe(i):
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = local.conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    target = urllib.parse.quote(f"{base}/c{i}", safe="")
    try:
        conn.request("GET", f"/probe?module={module}&target={target}")
        body = conn.getresponse().read().decode()
        good = "\nprobe_success 1" in body
    except Exception:
        local.conn = None
        good = False
    with lock:
        (ok if good else failed)[0] += 1
def ticks():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
def status(key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
step = interval / checks
start = time.monotonic()
window = None
with ThreadPoolExecutor(64) as pool:
    n = 0
    while True:
        due = start + n * step
        now = time.monotonic()
        if window is None and now - start >= warmup:
            window = (ticks(), ok[0] + failed[0], failed[0], now)
        if now - start >= warmup + measure:
            break
        if due > now:
            time.sleep(due - now)
        pool.submit(probe, n % checks + 1)
        n += 1
    end = (ticks(), ok[0] + failed[0], failed[0], time.monotonic())
cpu_s = (end[0] - window[0]) / hz
probes = end[1] - window[1]
per = cpu_s * 1e6 / probes if probes else float("nan")
hwm, rss, anon = status("VmHWM"), status("VmRSS"), status("RssAnon")
print(f"{'bb-' + scheme:<6} probes {probes:>6}  cpu {cpu_s:6.2f} s  {per:7.1f} us/probe  "
      f"peak RSS {hwm/1024:5.1f} MB  RSS now {rss/1024:5.1f} MB "
      f"(heap and stacks {anon/1024:5.1f} MB)  failed {end[2] - window[2]}")
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "agent cost: $CHECKS checks every $INTERVAL, ${WARMUP}s warm-up, ${MEASURE}s measured ($(nproc) cores)"
HTTP_PORT=${HTTP##*:}
HTTPS_PORT=${HTTPS##*:}
BB_PORT=$(free_port)
cat >"$WORK/blackbox.yml" <<YAML
modules:
  plain:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
  tls:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: $CA
        server_name: shop.test
YAML
{
    # A pipeline's subshell: the agents and exporters it starts are in its
    # own PIDS, which the script's cleanup does not see; it stops them
    # itself, however it ends.
    trap stop_started EXIT
    run http "$HTTP_PORT" ""
    run https "$HTTPS_PORT" "ca_file = \"$CA\""
    [ "${AGENT_ONLY:-0}" = 1 ] && exit 0
    blackbox http "$HTTP_PORT" plain
    blackbox https "$HTTPS_PORT" tls
} | tee "$WORK/figures"
# The ratios, from the lines above (agent ÷ blackbox_exporter).
python3 - "$WORK/figures" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+)\s+probes\s+(\d+)\s+cpu\s+\S+ s\s+(\S+) us/probe\s+peak RSS\s+(\S+) MB", line)
    if m:
        rows[m.group(1)] = (float(m.group(3)), float(m.group(4)))
for scheme in ("http", "https"):
    a, b = rows.get(scheme), rows.get("bb-" + scheme)
    if a and b:
        print(f"{scheme:<6} agent / blackbox_exporter: CPU per probe {a[0]/b[0]:.2f}x "
              f"(target <= 0.5x), peak RSS {a[1]/b[1]:.2f}x (agent target <= 16 MB)")
PY
