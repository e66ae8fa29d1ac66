# sessionfold — `make help` lists the targets.
#
#   make run    nats-server + redis-server (RedisJSON) into .deps/ if missing, build, serve :8080
#   make test   the same install, then every test
#
# RELEASE=1 builds and runs the release profile (slow to build on 2 cores).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
DEPS := $(CURDIR)/.deps

ifeq ($(RELEASE),1)
PROFILE_FLAGS := --release
BIN_DIR := target/release
else
PROFILE_FLAGS :=
BIN_DIR := target/debug
endif

# The servers the integration tests start (the harness falls back to the same
# .deps/ paths); set them in the environment to use other binaries.
SESSIONFOLD_NATS_SERVER ?= $(DEPS)/bin/nats-server
SESSIONFOLD_REDIS_SERVER ?= $(DEPS)/bin/redis-server
SESSIONFOLD_REJSON ?= $(DEPS)/lib/rejson.so

.PHONY: help deps build run test lint fmt clean

help: ## List the targets
	@echo "usage: make <target>   (RELEASE=1 for the release profile)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-7s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## Install nats-server, redis-server and RedisJSON into .deps/ (pinned, idempotent)
	scripts/bootstrap.sh

build: ## Build the sessionfold binary (debug; RELEASE=1 for release)
	$(CARGO) build -p sessionfold $(PROFILE_FLAGS)

run: deps build ## Start NATS :14222 and Redis :16379 (or use NATS_URL/REDIS_URL), serve :8080
	SESSIONFOLD_BIN="$(BIN_DIR)/sessionfold" \
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		scripts/run-local.sh

test: deps ## Every test (unit, integration against real servers, doc tests); checks compose.yaml
	@if docker compose version >/dev/null 2>&1; then \
		docker compose config -q && echo "compose.yaml: ok"; \
	else \
		echo "compose.yaml: not checked (no docker compose plugin here)"; \
	fi
	SESSIONFOLD_NATS_SERVER="$(SESSIONFOLD_NATS_SERVER)" \
	SESSIONFOLD_REDIS_SERVER="$(SESSIONFOLD_REDIS_SERVER)" \
	SESSIONFOLD_REJSON="$(SESSIONFOLD_REJSON)" \
		$(CARGO) test --workspace

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output and local server data (.data/)
	$(CARGO) clean
	rm -rf .data
