#!/usr/bin/env bash
# Benchmarks, as README says: installs the stack's programs if missing, builds Quire in
# release mode, then runs `quire bench` (own local stack, synthetic dataset, figures).
# Arguments go to `quire bench`, e.g. `scripts/bench.sh --documents 10000 --engine language-id`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
cargo build --release --workspace --locked
exec target/release/quire bench "$@"
