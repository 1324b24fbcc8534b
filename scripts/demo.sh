#!/usr/bin/env bash
# The demo, as README says: installs the stack's programs if missing, builds Quire, then
# runs `quire demo` (stack up, four services, a multilingual sample dataset, a summary).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
cargo build --workspace --locked
exec target/debug/quire demo "$@"
