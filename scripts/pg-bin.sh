#!/usr/bin/env bash
# Prints the directory with PostgreSQL's server binaries (initdb, pg_ctl,
# postgres): $STRANGLER_PG_BIN, else the newest /usr/lib/postgresql/<ver>/bin
# (where Debian puts them, off PATH), else the one on PATH. Exits 1 if none.
set -euo pipefail
if [ -n "${STRANGLER_PG_BIN:-}" ] && [ -x "$STRANGLER_PG_BIN/initdb" ]; then
  echo "$STRANGLER_PG_BIN"; exit 0
fi
newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5n | tail -n1 || true)
if [ -n "$newest" ] && [ -x "$newest/initdb" ]; then
  echo "$newest"; exit 0
fi
if command -v initdb >/dev/null; then
  dirname "$(readlink -f "$(command -v initdb)")"; exit 0
fi
exit 1
