# Sourced by `make demo-fleet` and the store benchmark: a PostgreSQL server of
# their own in a directory (never the system's), on loopback. As root it runs
# as `nobody` (PostgreSQL refuses root). Needs PG_BIN (scripts/pg-bin.sh).

# pg_as_server_user CMD...: runs CMD as the user the server runs as.
pg_as_server_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi
}

# pg_start DIR PORT PASSWORD: a new cluster in DIR (user `strangler`, the
# password for TCP connections), started on 127.0.0.1:PORT, database `strangler`.
pg_start() {
  local dir=$1 port=$2 password=$3
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown nobody "$dir"
  printf '%s' "$password" > "$dir/pwfile"
  [ "$(id -u)" -eq 0 ] && chown nobody "$dir/pwfile"
  (cd "$dir" && pg_as_server_user "$PG_BIN/initdb" -D "$dir/data" -U strangler --auth-local=trust \
      --auth-host=scram-sha-256 --pwfile="$dir/pwfile" -E UTF8 --no-locale -N >"$dir/initdb.log" 2>&1) \
    || { cat "$dir/initdb.log" >&2; return 1; }
  (cd "$dir" && pg_as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null) \
    || { cat "$dir/postgres.log" >&2; return 1; }
  PGPASSWORD=$password "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U strangler -d postgres \
    -c "CREATE DATABASE strangler" >/dev/null
}

# pg_stop DIR: a fast shutdown.
pg_stop() {
  local dir=$1
  (cd "$dir" && pg_as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1) || true
}
