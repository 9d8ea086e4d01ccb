#!/usr/bin/env bash
# The whole suite against real parts: lint and types, then unit and integration tests
# with a real Kafka broker and a real PostgreSQL. Starts what is not running and stops
# what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${PYTHON:-python3} -m uv"
# rustup's cargo builds the native fast path (services/engagement/native).
if [ -d "$HOME/.cargo/bin" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

./scripts/bootstrap.sh --with-postgres --with-chromium

started_kafka=0
if ! $UV run --frozen crm kafka status --check; then
  $UV run --frozen crm kafka start
  started_kafka=1
fi
started_postgres=0
if ! $UV run --frozen crm postgres status --check; then
  $UV run --frozen crm postgres start
  started_postgres=1
fi
cleanup() {
  if [ "$started_kafka" -eq 1 ]; then $UV run --frozen crm kafka stop || true; fi
  if [ "$started_postgres" -eq 1 ]; then $UV run --frozen crm postgres stop || true; fi
}
trap cleanup EXIT

echo "==> lint: ruff, mypy, import-linter, contract schemas"
$UV run --frozen ruff check .
$UV run --frozen ruff format --check .
$UV run --frozen mypy
(cd services/engagement/native && cargo fmt --check && cargo clippy --release --quiet -- -D warnings)
$UV run --frozen lint-imports
$UV run --frozen python -m crm_contracts.schemas --check

echo "==> tests"
$UV run --frozen pytest "$@"
