#!/usr/bin/env bash
# A longer campaign of the config fuzzers (agent/src/config/fuzz.rs and
# collector/src/config/fuzz.rs, mutations from testkit/src/config_fuzz.rs):
# mutated agent and collector configs must each give a located error or a
# config that passes start-up's checks; never a panic or a hang.
#   bench/fuzz-config.sh [CASES]   (default 20000 per parser)
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-20000}"
start=$(date +%s)
# Without DATABASE_URL the fuzzer also runs the collector's preflight.
env -u DATABASE_URL VANTAGE_FUZZ_CASES="$cases" \
    cargo test --release -p vantage-collector --lib config::fuzz -- --test-threads 2
VANTAGE_FUZZ_CASES="$cases" cargo test --release -p vantage-agent --lib config::fuzz -- --test-threads 2
end=$(date +%s)
echo "config fuzz: $cases cases per parser (agent, collector), 0 failures, $((end - start)) s"
