#!/usr/bin/env bash
# The whole test suite, as README says: installs the stack's programs if missing (cached
# in ~/.cache/quire/tools), builds the workspace, runs unit tests, then the integration
# tests, which start and stop their own broker and registry.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh
scripts/python-env.sh
cargo build --workspace --locked
cargo test --workspace --locked --exclude integration-tests
# Integration tests each run a whole pipeline: one at a time on a 2-core machine.
cargo test --locked -p integration-tests -- --test-threads=1 --nocapture
