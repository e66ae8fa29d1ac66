#!/usr/bin/env bash
# Runs sessionfold on this machine: its own nats-server (JetStream) and
# redis-server (RedisJSON) on private ports, then `sessionfold dev` in the
# foreground, serving /websocket and /data on :8080. Ctrl-C (or SIGTERM) stops
# the app gracefully, then the servers.
#
#   NATS_URL / REDIS_URL   when set, that server is used and none is started
#   SF_NATS_PORT           port of the nats-server started here (default 14222)
#   SF_REDIS_PORT          port of the redis-server started here (default 16379)
#   SF_DATA_DIR            data and logs (default <repo>/.data); kept between runs
#   SESSIONFOLD_BIN        the sessionfold binary (default target/debug/sessionfold)
#   SESSIONFOLD_NATS_SERVER, SESSIONFOLD_REDIS_SERVER, SESSIONFOLD_REJSON
#                          server binaries and module (default: .deps/, see scripts/bootstrap.sh;
#                          the Redis is Valkey 9)
#   SESSIONFOLD_REDISEARCH the query engine module: unset loads .deps/lib/redisearch.so when
#                          present, 0 loads none, a path loads that file
#   SF_NATS_SYNC_INTERVAL  JetStream's sync_interval (default always: every write is fsynced
#                          before it is acknowledged; nats-server's own default is 2m)
#   LISTEN                 address of the app (default 0.0.0.0:8080)
#
# Extra arguments are passed to `sessionfold dev` (see `sessionfold dev --help`).
#
# Functions here are called through traps and by name (wait_ready), and the
# servers' own log files also take their stray output.
# shellcheck disable=SC2317,SC2094
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NATS_PORT="${SF_NATS_PORT:-14222}"
REDIS_PORT="${SF_REDIS_PORT:-16379}"
DATA="${SF_DATA_DIR:-$ROOT/.data}"
APP="${SESSIONFOLD_BIN:-$ROOT/target/debug/sessionfold}"
NATS_SERVER="${SESSIONFOLD_NATS_SERVER:-$ROOT/.deps/bin/nats-server}"
REDIS_SERVER="${SESSIONFOLD_REDIS_SERVER:-$ROOT/.deps/bin/redis-server}"
REJSON="${SESSIONFOLD_REJSON:-$ROOT/.deps/lib/rejson.so}"
NATS_SYNC_INTERVAL="${SF_NATS_SYNC_INTERVAL:-always}"
case "${SESSIONFOLD_REDISEARCH-unset}" in
  unset) SEARCH="$ROOT/.deps/lib/redisearch.so"; [[ -s "$SEARCH" ]] || SEARCH="" ;;
  "" | 0 | false | off | no) SEARCH="" ;;
  1 | true | on | yes) SEARCH="$ROOT/.deps/lib/redisearch.so" ;;
  *) SEARCH="$SESSIONFOLD_REDISEARCH" ;;
esac
START_TIMEOUT_SECS="${SF_START_TIMEOUT_SECS:-30}"
STOP_TIMEOUT_SECS="${SF_STOP_TIMEOUT_SECS:-30}"

# Never fails: a closed stdout/stderr (e.g. `make run | tee` interrupted) must
# not stop the clean-up.
log() { printf 'run-local: %s\n' "$*" >&2 2>/dev/null || true; }
die() { printf 'run-local: error: %s\n' "$*" >&2; exit 1; }

# The pids this script started; only these are ever signalled.
nats_pid=""
redis_pid=""
app_pid=""

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# stop_pid <name> <pid> <signal>: signals one process and waits for it, with a
# deadline (cut short by another Ctrl-C), then SIGKILL.
hurry=0
stop_pid() {
  local name="$1" pid="$2" sig="$3" deadline
  alive "$pid" || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT_SECS))
  while alive "$pid" && ((SECONDS < deadline && !hurry)); do sleep 0.1 || true; done
  if alive "$pid"; then
    log "$name (pid $pid) did not stop; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

exiting=0
cleanup_started=$SECONDS
cleanup() {
  local status=$?
  # Best effort from here on: a failed command (e.g. a `sleep` that a second
  # Ctrl-C interrupted) must not end the clean-up.
  set +e
  exiting=1
  cleanup_started=$SECONDS
  trap - EXIT
  trap '' PIPE HUP
  # The app first, so that it can answer its clients and flush to NATS.
  stop_pid sessionfold "$app_pid" INT
  # The servers get their own grace period: a hurried app should not cost data.
  hurry=0
  cleanup_started=$SECONDS
  if [[ -n "$redis_pid$nats_pid" ]]; then log "stopping the servers"; fi
  stop_pid redis-server "$redis_pid" TERM
  stop_pid nats-server "$nats_pid" TERM
  rm -f "$DATA/nats.pid" "$DATA/redis.pid"
  exit "$status"
}

# on_signal <status>: exit, which runs cleanup. Once exiting, a Ctrl-C pressed
# again hurries the clean-up; a signal repeated at once by a wrapper
# (timeout(1) signals its child, then its process group) does not.
on_signal() {
  if ((exiting)); then
    if ((SECONDS - cleanup_started >= 2)); then hurry=1; fi
    return 0
  fi
  exiting=1
  cleanup_started=$SECONDS
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
trap 'on_signal 141' PIPE

# port_open <port>: something accepts TCP connections on 127.0.0.1:<port>.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# nats_ready <port>: the server greets with an INFO line announcing JetStream.
nats_ready() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    IFS= read -r -t 2 info <&3 || exit 1
    [[ "$info" == INFO* && "$info" == *'"jetstream":true'* ]]
  ) 2>/dev/null
}

# redis_ready <port>: PING answers +PONG (not -LOADING while the AOF loads).
redis_ready() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    [[ "$reply" == +PONG* ]]
  ) 2>/dev/null
}

# wait_ready <name> <pid> <logfile> <check> <port>: polls until <check> passes,
# failing early if the process died and after START_TIMEOUT_SECS.
wait_ready() {
  local name="$1" pid="$2" logfile="$3" check="$4" port="$5" deadline
  deadline=$((SECONDS + START_TIMEOUT_SECS))
  until "$check" "$port"; do
    if ! alive "$pid"; then
      tail -n 20 "$logfile" >&2 || true
      die "$name exited during start-up (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$logfile" >&2 || true
      die "$name did not answer on 127.0.0.1:$port within ${START_TIMEOUT_SECS}s (log: $logfile)"
    fi
    sleep 0.1
  done
}

# stop_stale <name> <pidfile> <marker>: a previous run that was killed without
# cleaning up may have left its server running; stop it if that pid still is
# our server (its command line or working directory names <marker>).
stop_stale() {
  local name="$1" pidfile="$2" marker="$3" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  rm -f "$pidfile"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 0
  # redis-server rewrites its command line but runs in its --dir.
  if [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$marker" ]] \
    || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"; then
    log "stopping $name (pid $pid) left running by an earlier run"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1 || true; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
}

[[ -x "$APP" ]] || die "$APP not found: build it first (make build)"
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)" # absolute: redis-server changes into its --dir

# The servers run in their own session (setsid), so that a Ctrl-C in the
# terminal reaches only the app; they are stopped after it has finished.
if [[ -z "${NATS_URL:-}" ]]; then
  [[ -x "$NATS_SERVER" ]] || die "$NATS_SERVER not found: run make deps (scripts/bootstrap.sh)"
  stop_stale nats-server "$DATA/nats.pid" "$DATA/nats"
  port_open "$NATS_PORT" && die "port $NATS_PORT is in use: set SF_NATS_PORT, or NATS_URL to use that server"
  mkdir -p "$DATA/nats"
  [[ "$NATS_SYNC_INTERVAL" =~ ^[A-Za-z0-9.]+$ ]] || die "SF_NATS_SYNC_INTERVAL=$NATS_SYNC_INTERVAL: expected always or a duration such as 2m"
  # sync_interval has no command-line flag, so the JetStream settings go in a
  # config file (quoted: unquoted, 2m would be read as the number 2000000).
  cat >"$DATA/nats.conf" <<CONF
# written by scripts/run-local.sh on each start
jetstream {
  store_dir: "$DATA/nats"
  sync_interval: "$NATS_SYNC_INTERVAL"
}
CONF
  log "starting nats-server on 127.0.0.1:$NATS_PORT (JetStream store $DATA/nats, sync_interval $NATS_SYNC_INTERVAL, log $DATA/nats.log)"
  setsid "$NATS_SERVER" --config "$DATA/nats.conf" --addr 127.0.0.1 --port "$NATS_PORT" \
    --server_name sessionfold-dev --log "$DATA/nats.log" </dev/null >>"$DATA/nats.log" 2>&1 &
  nats_pid=$!
  echo "$nats_pid" >"$DATA/nats.pid"
  wait_ready nats-server "$nats_pid" "$DATA/nats.log" nats_ready "$NATS_PORT"
  export NATS_URL="nats://127.0.0.1:$NATS_PORT"
else
  log "using NATS at $NATS_URL"
fi

if [[ -z "${REDIS_URL:-}" ]]; then
  [[ -x "$REDIS_SERVER" ]] || die "$REDIS_SERVER not found: run make deps (scripts/bootstrap.sh)"
  [[ -s "$REJSON" ]] || die "$REJSON not found: run make deps (scripts/bootstrap.sh)"
  [[ -z "$SEARCH" || -s "$SEARCH" ]] || die "$SEARCH not found: run make deps (scripts/bootstrap.sh), or SESSIONFOLD_REDISEARCH=0"
  modules=(--loadmodule "$REJSON")
  [[ -z "$SEARCH" ]] || modules+=(--loadmodule "$SEARCH")
  stop_stale redis-server "$DATA/redis.pid" "$DATA/redis"
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is in use: set SF_REDIS_PORT, or REDIS_URL to use that server"
  mkdir -p "$DATA/redis"
  log "starting $("$REDIS_SERVER" --version | cut -d' ' -f1-3) with RedisJSON${SEARCH:+ and the query engine} on 127.0.0.1:$REDIS_PORT (AOF in $DATA/redis, log $DATA/redis.log)"
  setsid "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize no \
    "${modules[@]}" --dir "$DATA/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --include "$ROOT/deploy/redis/sessionfold.conf" \
    --logfile "$DATA/redis.log" </dev/null >>"$DATA/redis.log" 2>&1 &
  redis_pid=$!
  echo "$redis_pid" >"$DATA/redis.pid"
  wait_ready redis-server "$redis_pid" "$DATA/redis.log" redis_ready "$REDIS_PORT"
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
else
  log "using Redis at $REDIS_URL"
fi

listen="${LISTEN:-0.0.0.0:8080}"
log "starting sessionfold dev on $listen (NATS $NATS_URL, Redis $REDIS_URL); Ctrl-C stops everything"
"$APP" dev --listen "$listen" "$@" &
app_pid=$!
status=0
wait "$app_pid" || status=$?
app_pid=""
exit "$status"
