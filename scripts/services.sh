#!/usr/bin/env bash
# Start (or stop) private Redis and PostgreSQL servers under .services/, for a machine where
# they are installed but not running. A port that already answers is left alone.
#   scripts/services.sh start|stop     (REDIS_PORT=6379 PG_PORT=5432 SERVICES_DIR=.services
#                                       by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SERVICES_DIR:-$root/.services}
redis_port=${REDIS_PORT:-6379}
pg_port=${PG_PORT:-5432}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bindir() {
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
  else
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
  fi
}

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_redis() {
  if answers "$redis_port"; then echo "Redis: already answering on port $redis_port"; return; fi
  if ! command -v redis-server >/dev/null; then
    echo "Redis is not installed: apt-get install redis-server (or brew install redis)" >&2; return 1
  fi
  mkdir -p "$dir/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --dir "$dir/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log"
  for _ in $(seq 50); do answers "$redis_port" && break; sleep 0.1; done
  echo "Redis: started on port $redis_port (data in .services/redis)"
}

start_postgres() {
  if answers "$pg_port"; then echo "PostgreSQL: already answering on port $pg_port"; return; fi
  local bindir; bindir=$(pg_bindir)
  if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL is not installed: apt-get install postgresql (or brew install postgresql)" >&2; return 1
  fi
  local data="$dir/postgres"
  mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown postgres "$data" && chmod 700 "$data"
  if [ ! -s "$data/PG_VERSION" ]; then
    as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  as_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $pg_port -k $data -c listen_addresses=127.0.0.1" start >/dev/null
  echo "PostgreSQL: started on port $pg_port (data in .services/postgres, user postgres, trust auth)"
}

stop_all() {
  if [ -s "$dir/redis/redis.pid" ]; then
    kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null && echo "Redis: stopped" || true
  fi
  if [ -s "$dir/postgres/postmaster.pid" ]; then
    as_pg "$(pg_bindir)/pg_ctl" -D "$dir/postgres" -m fast stop >/dev/null && echo "PostgreSQL: stopped"
  fi
}

case "${1:-start}" in
  start) start_redis; start_postgres ;;
  stop) stop_all ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
