#!/usr/bin/env bash
# Delivery soak: kill -9 the agent at random moments, many times, against a
# real collector process and PostgreSQL, then compare every result the agent
# produced (the seqs the target saw) with what reached the database.
#
#   bench/soak.sh [CYCLES]        (default 1000)
#
# Needs PostgreSQL at $DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# Prints: cycles, time, produced, stored, duplicates, missing outside gaps,
# lost inside recorded gaps.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-1000}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build --workspace --all-targets --quiet
VANTAGE_SOAK_CYCLES="$cycles" cargo test --quiet -p vantage-collector --test collector \
    -- faults::agent_killed_at_random_moments --exact --nocapture 2>&1 \
    | grep -E "^(soak:|agent kill -9:|[0-9]+ cycles|test result)" | cut -c1-400
