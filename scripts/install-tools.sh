#!/usr/bin/env bash
# Installs the local stack's programs (broker, schema registry, promtool) once into a
# cached place outside the clone, so later runs and CI find them without rebuilding.
set -euo pipefail

TOOLS_DIR="${QUIRE_TOOLS_DIR:-$HOME/.cache/quire/tools}"
BIN="$TOOLS_DIR/bin"
mkdir -p "$BIN"

NISSHI_VERSION=0.7.0
RIVVEN_SCHEMA_VERSION=0.0.22

log() { printf '[install-tools] %s\n' "$*" >&2; }

installed_version() { # name version -> 0 if the marker says this version is installed
  [ -x "$BIN/$1" ] && [ "$(cat "$TOOLS_DIR/$1.version" 2>/dev/null)" = "$2" ]
}

install_crate() { # crate version extra-args...
  local crate=$1 version=$2; shift 2
  if installed_version "$crate" "$version"; then
    log "$crate $version already in $BIN"
    return
  fi
  log "building $crate $version (cached in $TOOLS_DIR; takes a while once)"
  CARGO_TARGET_DIR="$TOOLS_DIR/build-$crate" \
    cargo install "$crate@$version" --locked --root "$TOOLS_DIR" "$@"
  echo "$version" >"$TOOLS_DIR/$crate.version"
  rm -rf "$TOOLS_DIR/build-$crate"
}

# `all` is what the tests and the demo need (promtool unit-tests the alert rules).
want="${1:-all}"
case "$want" in
  all|broker) install_crate nisshi "$NISSHI_VERSION" --ignore-rust-version --features dynostore,libsql ;;&
  all|registry) install_crate rivven-schema "$RIVVEN_SCHEMA_VERSION" ;;&
  all|promtool)
    if ! command -v promtool >/dev/null 2>&1; then
      log "installing promtool (Debian package prometheus)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi ;;
  all|broker|registry|promtool) ;;
  *) echo "usage: $0 [all|broker|registry|promtool]" >&2; exit 2 ;;
esac
log "tools ready in $BIN"
