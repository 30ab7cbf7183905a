#!/usr/bin/env bash
# Agent cost: whole-process CPU time per probe and peak RSS of the real agent
# binary running many checks against local targets (plain HTTP, then HTTPS
# with a full handshake per probe), delivering to a real collector.
#
#   bench/agent-cost.sh            # 1000 checks every 10 s, 60 s measured
#   CHECKS=200 MEASURE=30 bench/agent-cost.sh
#
# Needs PostgreSQL (DATABASE_URL, default the local trust-auth server); uses a
# throwaway database it drops afterwards. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKS=${CHECKS:-1000}
INTERVAL=${INTERVAL:-10s}
WARMUP=${WARMUP:-15}
MEASURE=${MEASURE:-60}
BASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=vantage_bench_$$
DB_URL="${BASE_URL%/*}/$DB"

cargo build --release -q --workspace --bins
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$BASE_URL" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
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
GRPC_PORT=$(free_port)
cat >"$WORK/collector.toml" <<TOML
grpc_listen = "127.0.0.1:$GRPC_PORT"
http_listen = "127.0.0.1:$(free_port)"
[database]
url = "$DB_URL"
TOML
"$BIN/vantage-collector" migrate --config "$WORK/collector.toml" >/dev/null
RUST_LOG=warn "$BIN/vantage-collector" serve --config "$WORK/collector.toml" >"$WORK/collector.log" 2>&1 &
PIDS+=($!)
sleep 1

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
committed() { psql -qtA "$DB_URL" -c "SELECT count(*) FROM probe_results WHERE agent_id = '$1'"; }

run() {
    local scheme=$1 port=$2 extra=$3 agent=bench-$1
    local token
    token=$("$BIN/vantage-collector" agent add "$agent" --region bench --config "$WORK/collector.toml" 2>/dev/null)
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
    RUST_LOG=warn "$BIN/vantage-agent" --config "$WORK/$agent.toml" >"$WORK/$agent.log" 2>&1 &
    local pid=$!
    sleep "$WARMUP"
    local cpu0 probes0 cpu1 probes1
    cpu0=$(cpu_ticks "$pid"); probes0=$(committed "$agent")
    sleep "$MEASURE"
    cpu1=$(cpu_ticks "$pid"); probes1=$(committed "$agent")
    local hwm rss
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    local failed
    failed=$(psql -qtA "$DB_URL" -c "SELECT count(*) FROM probe_results WHERE agent_id = '$agent' AND outcome <> 'ok'")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$scheme" "$cpu0" "$cpu1" "$probes0" "$probes1" "$CLK_TCK" "$hwm" "$rss" "$failed" <<'PY'
import sys
scheme, c0, c1, p0, p1, hz, hwm, rss, failed = sys.argv[1:]
cpu_s = (int(c1) - int(c0)) / int(hz)
probes = int(p1) - int(p0)
per = cpu_s * 1e6 / probes if probes else float("nan")
print(f"{scheme:<6} probes {probes:>6}  cpu {cpu_s:6.2f} s  {per:7.1f} us/probe  "
      f"peak RSS {int(hwm)/1024:5.1f} MB  RSS now {int(rss)/1024:5.1f} MB  failed {failed}")
PY
}

echo "agent cost: $CHECKS checks every $INTERVAL, ${WARMUP}s warm-up, ${MEASURE}s measured ($(nproc) cores)"
HTTP_PORT=${HTTP##*:}
HTTPS_PORT=${HTTPS##*:}
run http "$HTTP_PORT" ""
run https "$HTTPS_PORT" "ca_file = \"$CA\""
