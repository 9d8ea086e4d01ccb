#!/usr/bin/env bash
# Installs whatever this machine lacks to run and test the platform, then syncs the
# Python environment from the lock file. Safe to run again: each step checks first.
#   - uv (from PyPI, into the machine's Python)
#   - Java 17+ and Maven (Debian packages) for the local Kafka broker
#   - PostgreSQL (Debian package) for the production-mode tests   [--with-postgres]
#   - Chromium (Debian package) for the dashboard tests             [--with-chromium]
#   - faketime (Debian package) for the suite's run a year ahead    [--with-faketime]
#   - the Kafka broker jars (Maven Central, cached under ~/.cache/crm)
# The ingestion API's native fast path (services/engagement/native) is Rust: uv builds
# it with maturin and the machine's cargo (rustup's, in ~/.cargo/bin on this kind of
# machine; Debian's rustc is too old for its crates).
set -euo pipefail
cd "$(dirname "$0")/.."

want_postgres=0
want_chromium=0
want_faketime=0
for arg in "$@"; do
  case "$arg" in
    --with-postgres) want_postgres=1 ;;
    --with-chromium) want_chromium=1 ;;
    --with-faketime) want_faketime=1 ;;
  esac
done

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to apt-get install $*; install them and re-run" >&2
    exit 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

PY=${PYTHON:-python3}
if ! "$PY" -m uv --version >/dev/null 2>&1; then
  say "installing uv from PyPI"
  "$PY" -m pip install --quiet --disable-pip-version-check "uv>=0.9,<1"
fi

need=()
java_ok=0
if command -v java >/dev/null 2>&1; then
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${major:-0}" -ge 17 ] && java_ok=1
fi
[ "$java_ok" -eq 1 ] || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ "$want_postgres" -eq 1 ] && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ "$want_chromium" -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need+=(chromium fonts-noto-cjk)
fi
if [ "$want_faketime" -eq 1 ] && ! command -v faketime >/dev/null 2>&1; then
  need+=(faketime)
fi
# test.sh compiles scripts/faketime/monotonic_sleep.c for that run.
if [ "$want_faketime" -eq 1 ] && ! command -v cc >/dev/null 2>&1; then
  need+=(gcc libc6-dev)
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  apt_install "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo (Rust 1.82 or later) is needed to build services/engagement/native; install it with rustup and re-run" >&2
  exit 1
fi

say "syncing the Python environment (uv.lock)"
"$PY" -m uv sync --frozen --all-packages --quiet
# Bytecode, compiled once here: with PYTHONDONTWRITEBYTECODE set (as on this kind of
# machine, and in the image) Python never caches it, so every process start (each
# service, each checker and API worker, each CLI call) would compile pydantic, numpy
# and the rest from source again: 0.9 s instead of 0.4 s to import the analytics
# service. Incremental: up-to-date files are skipped in about a second.
.venv/bin/python -m compileall -qq -j 0 .venv/lib/python3*/site-packages contracts/src libs/*/src services/*/src \
  >/dev/null 2>&1 || true
say "ready"
