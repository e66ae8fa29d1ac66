#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster (run
# by `make test` and `make check-deploy`; `scripts/bootstrap.sh` installs the
# tools into .deps/):
#
#   compose.yaml  parsed and resolved by `docker-compose config -q`
#                 (.deps/bin/docker-compose, else the docker CLI's plugin)
#   deploy/k8s    rendered with kustomize (`kubectl kustomize`, else
#                 `kustomize build`) and every object validated with
#                 kubernetes-validate --strict against the schemas of each
#                 Kubernetes version in $K8S_VERSIONS (bundled, offline)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"

die() { printf 'check-deploy: error: %s\n' "$*" >&2; exit 1; }

cd "$ROOT"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/sessionfold-check-deploy.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------------------------ compose
if [[ -x "$DEPS/bin/docker-compose" ]]; then
  compose=("$DEPS/bin/docker-compose")
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  die "no docker-compose: run scripts/bootstrap.sh (make deps)"
fi
# Empty the variables compose.yaml interpolates, so that the defaults in the
# file are what gets checked, whatever this shell exports.
env -u AUTH_TOKEN_SECRET -u AUTH_API_KEYS -u RUST_LOG \
  "${compose[@]}" --project-directory "$ROOT" -f compose.yaml config -q \
  || die "compose.yaml does not parse"
services="$(env -u RUST_LOG "${compose[@]}" --project-directory "$ROOT" -f compose.yaml config --services | sort | paste -sd' ' -)"
[[ "$services" == "api ingest nats processor proxy redis" ]] \
  || die "compose.yaml has services '$services', expected api ingest nats processor proxy redis"
echo "compose.yaml: ok ($("${compose[@]}" version --short 2>/dev/null || echo '?'); services: $services)"

# -------------------------------------------------------------- kubernetes
validator="$DEPS/bin/kubernetes-validate"
[[ -x "$validator" ]] || die "no kubernetes-validate: run scripts/bootstrap.sh (make deps)"
rendered="$TMP/k8s.yaml"
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/k8s >"$rendered" || die "kubectl kustomize deploy/k8s failed"
  how="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1; then
  kustomize build deploy/k8s >"$rendered" || die "kustomize build deploy/k8s failed"
  how="kustomize build"
else
  # Without kustomize, validate the resource files themselves (the
  # kustomization only adds the namespace, labels and image tags).
  echo "check-deploy: no kubectl or kustomize on PATH: validating deploy/k8s/*.yaml without rendering" >&2
  for file in deploy/k8s/*.yaml; do
    [[ "$(basename "$file")" == kustomization.yaml ]] && continue
    printf -- '---\n' >>"$rendered"
    cat "$file" >>"$rendered"
  done
  how="resource files, not rendered"
fi
objects="$(grep -c '^kind:' "$rendered" || true)"
for kind in Deployment Service HorizontalPodAutoscaler ConfigMap Secret; do
  grep -q "^kind: $kind\$" "$rendered" || die "deploy/k8s renders no $kind"
done
for version in $K8S_VERSIONS; do
  "$validator" --strict --quiet -k "$version" "$rendered" \
    || die "deploy/k8s does not validate against Kubernetes $version"
done
echo "deploy/k8s: ok ($objects objects via $how; kubernetes-validate --strict against $K8S_VERSIONS)"
