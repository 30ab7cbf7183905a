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

log "dpkg --purge"
dpkg --purge vantage-agent vantage-collector
[ ! -e /usr/bin/vantage-agent ] && [ ! -e /usr/bin/vantage-collector ] || fail "binaries left after purge"
[ ! -e /etc/vantage/agent.toml ] || fail "conffile left after purge"
trap - EXIT
echo "packages: built, checked, installed, verified and removed"
