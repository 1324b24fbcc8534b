#!/usr/bin/env bash
# Benchmarks, as README says: installs the stack's programs if missing, builds Quire in
# release mode, then runs `quire bench` (own local stack; raw chains, Quire in both
# delivery modes, paced latency, stages alone, watchdog, restarts) and writes the figures
# to docs/benchmark.txt, which README's performance section quotes.
# Arguments go to `quire bench`, e.g. `scripts/bench.sh --documents 10000 --max-batch 2000`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
cargo build --release --workspace --locked
exec target/release/quire bench --results docs/benchmark.txt "$@"
