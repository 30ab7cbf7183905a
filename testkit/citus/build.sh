#!/usr/bin/env bash
# Installs Citus into this machine's PostgreSQL from the vendored source,
# where it is missing: the tests' Citus harness and CI call it, as they
# install PostgreSQL itself. Never from the network: the source is
# citus-13.2.2.tar.gz and its patch for Debian's PostgreSQL 15.20, found in
# $CITUS_VENDOR_DIR, else ../shared/vendor beside the repository.
#
# Usage: testkit/citus/build.sh [PG_CONFIG]
# Needs root for the Debian -dev packages and `make install`. Builds under
# target/citus-build in the repository; one build at a time (flock).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
pg_config="${1:-}"
if [ ! -x "$pg_config" ]; then
    pg_config="$(ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -1 || true)"
    [ -n "$pg_config" ] || pg_config="$(command -v pg_config || true)"
fi
log() { printf 'citus: %s\n' "$*" >&2; }

installed() {
    [ -x "$pg_config" ] && [ -f "$("$pg_config" --pkglibdir)/citus.so" ] &&
        [ -f "$("$pg_config" --sharedir)/extension/citus.control" ]
}

# The -dev packages the build needs (Debian names).
packages=(build-essential postgresql-server-dev-15 liblz4-dev libzstd-dev
    libcurl4-openssl-dev libkrb5-dev)

mkdir -p "$repo/target"
exec 9>"$repo/target/citus-build.lock"
flock 9
if installed; then
    exit 0
fi

vendor="${CITUS_VENDOR_DIR:-$repo/../shared/vendor}"
tarball="$vendor/citus-13.2.2.tar.gz"
patch="$vendor/citus-13.2.2-pg15.20.patch"
if [ ! -f "$tarball" ] || [ ! -f "$patch" ]; then
    log "Citus is not installed in $("$pg_config" --pkglibdir 2>/dev/null || echo "PostgreSQL's lib directory") and its source is not at $tarball (with $patch): set CITUS_VENDOR_DIR to the directory holding both"
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

build="$repo/target/citus-build"
rm -rf "$build"
mkdir -p "$build"
log "building Citus 13.2.2 for $("$pg_config" --version) in $build (about 6 minutes on 2 cores)"
tar xzf "$tarball" -C "$build"
cd "$build/citus-13.2.2"
patch -p1 -s <"$patch"
./configure PG_CONFIG="$pg_config" >"$build/configure.log" 2>&1 ||
    { tail -30 "$build/configure.log" >&2; exit 1; }
make -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -30 "$build/make.log" >&2; exit 1; }
make install >"$build/install.log" 2>&1 || { tail -30 "$build/install.log" >&2; exit 1; }
installed || { log "built, but citus.so is still not in $("$pg_config" --pkglibdir)"; exit 1; }
log "installed into $("$pg_config" --pkglibdir)"
