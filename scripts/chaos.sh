#!/usr/bin/env bash
# The chaos proof at full size: installs the stack's programs if missing, builds the
# workspace, then runs `quire-chaos` (own SQLite stack, seeded faults, verifier, figures).
# Arguments go to it, e.g. `scripts/chaos.sh --seed 7 --blocks 10000 --runs 3`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
cargo build --workspace --locked --bins
exec target/debug/quire-chaos "$@"
