#!/usr/bin/env bash
# The hostile-input proof at full size: installs the stack's programs if missing, builds
# the workspace (release: the default corpus of 100 000 tiny documents is a throughput
# run), then runs `quire-hostile` (own stack, generated corpus, figures).
# Arguments go to it, e.g. `scripts/hostile.sh --seed 42 --bad-records 10000`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
cargo build --release --workspace --locked --bins
exec target/release/quire-hostile "$@"
