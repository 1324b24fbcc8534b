#!/usr/bin/env bash
# A Python environment with Confluent's own client (confluent-kafka with its Avro
# deserializer), used by the interop test to read Quire's topics as a third party would.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
REQ="confluent-kafka[avro]==2.11.1"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/quire-requirements" 2>/dev/null)" != "$REQ" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$REQ"
  echo "$REQ" > "$VENV/quire-requirements"
fi
