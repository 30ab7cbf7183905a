#!/usr/bin/env bash
# Builds the two .deb packages (cargo-deb), checks their contents, installs
# them on this machine (dpkg -i), runs what an operator runs first
# (--version, check-config against the shipped example, systemd-analyze
# verify and security), and removes them again (dpkg --purge).
# Needs root (dpkg). cargo-deb is installed inside the clone
# (target/tools) when it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '\n== %s\n' "$*"; }
fail() { echo "check-packages: $*" >&2; exit 1; }

cargo_deb() {
    if command -v cargo-deb >/dev/null; then
        cargo deb "$@"
    else
        if [ ! -x target/tools/bin/cargo-deb ]; then
            log "installing cargo-deb into target/tools"
            cargo install -q --locked --root target/tools cargo-deb
        fi
        target/tools/bin/cargo-deb "$@"
    fi
}

log "the production collector depends on neither the agent nor the fixtures"
if cargo tree -q -p vantage-collector -e normal --prefix none | grep -E '^vantage-(agent|testkit|demo) '; then
    fail "vantage-collector depends on the agent, the fixtures or the demo"
fi

declare -A deb
for pkg in agent collector; do
    log "cargo deb -p vantage-$pkg"
    deb[$pkg]=$(cargo_deb -p "vantage-$pkg" --output target/debian/ 2>/dev/null | tail -1)
    [ -f "${deb[$pkg]}" ] || fail "no package built for vantage-$pkg"
    echo "${deb[$pkg]}"
    log "contents of ${deb[$pkg]##*/}"
    contents=$(dpkg-deb --contents "${deb[$pkg]}")
    echo "$contents"
    for path in "./usr/bin/vantage-$pkg" "./etc/vantage/$pkg.toml" \
                "./usr/lib/systemd/system/vantage-$pkg.service" \
                "./usr/share/doc/vantage-$pkg/README.md"; do
        grep -q " $path\$" <<<"$contents" || fail "${deb[$pkg]##*/} lacks $path"
    done
    # The manual ships whole: every page of docs/, beside the README that links it.
    for doc in docs/*.md; do
        path="./usr/share/doc/vantage-$pkg/$doc"
        grep -q " $path\$" <<<"$contents" || fail "${deb[$pkg]##*/} lacks $path"
    done
    grep -q "^/etc/vantage/$pkg.toml\$" <(dpkg-deb --ctrl-tarfile "${deb[$pkg]}" | tar -xO ./conffiles) \
        || fail "/etc/vantage/$pkg.toml is not a conffile"
done

log "dpkg -i"
export DEBIAN_FRONTEND=noninteractive
cleanup() { dpkg --purge vantage-agent vantage-collector >/dev/null 2>&1 || true; }
trap cleanup EXIT
dpkg -i "${deb[agent]}" "${deb[collector]}"

getent passwd vantage >/dev/null || fail "no vantage system user"
for pkg in agent collector; do
    mode=$(stat -c '%a %U:%G' "/etc/vantage/$pkg.toml")
    [ "$mode" = "640 root:vantage" ] || fail "/etc/vantage/$pkg.toml is $mode, expected 640 root:vantage"
    "/usr/bin/vantage-$pkg" --version
done

log "check-config against the shipped examples"
# As the README's steps do: the token `agent add` printed, in the file the
# example names.
install -m 0600 -o vantage -g vantage /dev/null /etc/vantage/agent.token
echo "vantage_0123456789abcdef0123456789abcdef" > /etc/vantage/agent.token
runuser -u vantage -- vantage-agent --config /etc/vantage/agent.toml --check-config
runuser -u vantage -- vantage-collector check-config --config /etc/vantage/collector.toml
rm -f /etc/vantage/agent.token

log "systemd-analyze verify"
systemd-analyze verify /usr/lib/systemd/system/vantage-agent.service /usr/lib/systemd/system/vantage-collector.service

log "systemd-analyze security (exposure at most 2.0)"
for unit in vantage-agent vantage-collector; do
    exposure=$(systemd-analyze security --offline=true "/usr/lib/systemd/system/$unit.service" 2>/dev/null \
        | awk '/Overall exposure level/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) print $i }')
    echo "$unit: exposure $exposure"
    awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || fail "$unit exposure $exposure > 2.0"
done

log "from the packages to an enrolled agent and a browsable incident"
# The README's steps with the installed binaries, run as the units run
# them (as the vantage user; systemd is not PID 1 here, so the state
# directory is made as StateDirectory= would): a private PostgreSQL, the
# collector, one enrolled agent with four vantages on loopback, a target
# answering 502 to 127.0.2.0/24, and the incident page.
cargo build -q -p vantage-testkit --bin vantage-fixtures
work=$(mktemp -d)
chown vantage:vantage "$work"
pids=()
e2e_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${pg_bin:-}" ] && runuser -u vantage -- "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work" /var/lib/vantage-agent /etc/vantage/agent.token
}
trap 'e2e_cleanup; cleanup' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
[ -x "$pg_bin/initdb" ] || pg_bin=$(dirname "$(command -v initdb)")
pg_port=$(free_port); grpc_port=$(free_port); http_port=$(free_port)
runuser -u vantage -- "$pg_bin/initdb" -D "$work/pg" -U vantage --auth=trust -E UTF8 >/dev/null
runuser -u vantage -- "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work -c fsync=off" start >/dev/null
runuser -u vantage -- "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U vantage vantage

# The operator's edit of the collector's conffile.
cat > /etc/vantage/collector.toml <<TOML
grpc_listen = "127.0.0.1:$grpc_port"
http_listen = "127.0.0.1:$http_port"
[database]
url = "postgres://vantage@127.0.0.1:$pg_port/vantage"
[detector]
interval = "1s"
window = "60s"
TOML
runuser -u vantage -- vantage-collector check-config --config /etc/vantage/collector.toml
runuser -u vantage -- vantage-collector serve --config /etc/vantage/collector.toml >"$work/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null || { cat "$work/collector.log"; fail "the collector did not become healthy"; }

token=$(runuser -u vantage -- vantage-collector agent add east --region us-east --config /etc/vantage/collector.toml)
install -m 0600 -o vantage -g vantage /dev/null /etc/vantage/agent.token
echo "$token" > /etc/vantage/agent.token

target/debug/vantage-fixtures "$work" 127.0.2.0/24 >"$work/fixtures.env" 2>"$work/fixtures.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^CA=' "$work/fixtures.env" && break; sleep 0.1; done
dns=$(sed -n 's/^DNS=//p' "$work/fixtures.env")
http_target=$(sed -n 's/^HTTP=//p' "$work/fixtures.env")
[ -n "$dns" ] && [ -n "$http_target" ] || fail "the fixtures did not start"

# The operator's edit of the agent's conffile.
cat > /etc/vantage/agent.toml <<TOML
agent_id = "east"
region = "us-east"
[collector]
endpoint = "http://127.0.0.1:$grpc_port"
token_file = "/etc/vantage/agent.token"
[spool]
path = "/var/lib/vantage-agent/spool.redb"
[dns]
resolvers = ["udp://$dns"]
[[vantage]]
name = "a"
source_ip = "127.0.2.1"
[[vantage]]
name = "b"
source_ip = "127.0.2.2"
[[vantage]]
name = "c"
source_ip = "127.0.3.1"
[[vantage]]
name = "d"
source_ip = "127.0.5.1"
[[check]]
name = "shop"
url = "http://shop.test:${http_target##*:}/"
interval = "1s"
timeout = "900ms"
TOML
install -d -o vantage -g vantage -m 0700 /var/lib/vantage-agent
runuser -u vantage -- vantage-agent --config /etc/vantage/agent.toml --check-config
runuser -u vantage -- vantage-agent --config /etc/vantage/agent.toml >"$work/agent.log" 2>&1 &
pids+=($!)

page=""
for _ in $(seq 120); do
    page=$(curl -fs -H 'Accept: text/html' "http://127.0.0.1:$http_port/incidents/1" || true)
    [ -n "$page" ] && break
    sleep 0.5
done
[ -n "$page" ] || { tail -20 "$work/collector.log" "$work/agent.log"; fail "no incident within 60 s"; }
grep -q 'egress prefix 127\.0\.2\.0/2' <<<"$page" || { echo "$page"; fail "the incident page does not name 127.0.2.0/24"; }
curl -fs -H 'Accept: text/html' "http://127.0.0.1:$http_port/" | grep -q 'href="/incidents/1"' \
    || fail "the incident list does not link incident 1"
curl -fs "http://127.0.0.1:$http_port/incidents/1" | python3 -c 'import json, sys; i = json.load(sys.stdin); print("incident 1:", i["explanation"])'
e2e_cleanup
trap cleanup EXIT

log "dpkg --purge"
dpkg --purge vantage-agent vantage-collector
[ ! -e /usr/bin/vantage-agent ] && [ ! -e /usr/bin/vantage-collector ] || fail "binaries left after purge"
[ ! -e /etc/vantage/agent.toml ] || fail "conffile left after purge"
trap - EXIT
echo "packages: built, checked, installed, verified and removed"
