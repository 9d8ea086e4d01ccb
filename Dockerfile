# syntax=docker/dockerfile:1.7
#
# One image for every process of the platform. The command picks the service and
# its role, e.g.
#
#   docker run --rm -p 8001:8001 crm identity api
#   docker run --rm crm identity relay
#
# Build:  docker build -t crm .
# See docs/deployment.md for compose and Helm.

# Both stages must use the same interpreter: the virtual environment built in the
# first stage points at /usr/local/bin/python3.11 of this base image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

# Same major.minor as the uv that wrote uv.lock, so the lock is read as written.
ARG UV_VERSION=0.13.9

# A compiler is only needed where a locked package has no wheel for the build
# platform (e.g. faust-streaming on arm64); it never reaches the runtime stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# The ingestion API's native fast path (services/engagement/native) is Rust, built by
# maturin when uv installs it; the toolchain stays in this stage.
COPY --from=rust:1-slim-bookworm /usr/local/cargo /usr/local/cargo
COPY --from=rust:1-slim-bookworm /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:$PATH

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Layer 1: third-party dependencies only. uv needs every member's pyproject.toml to
# see the workspace, but not its sources, so this layer survives code changes.
COPY pyproject.toml uv.lock ./
COPY contracts/pyproject.toml contracts/pyproject.toml
COPY libs/crm_platform/pyproject.toml libs/crm_platform/pyproject.toml
COPY libs/crm_cli/pyproject.toml libs/crm_cli/pyproject.toml
COPY services/identity/pyproject.toml services/identity/pyproject.toml
COPY services/engagement/pyproject.toml services/engagement/pyproject.toml
COPY services/engagement/native/pyproject.toml services/engagement/native/pyproject.toml
COPY services/support/pyproject.toml services/support/pyproject.toml
COPY services/analytics/pyproject.toml services/analytics/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-install-workspace

# Layer 2: the workspace members themselves. They stay editable (uv's default) and
# the runtime stage keeps them at the same path, so code that finds files beside
# its package (contracts/schemas, dashboard assets, DDL) behaves as in a checkout.
COPY contracts ./contracts
COPY libs ./libs
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages
# UV_COMPILE_BYTECODE covers site-packages; the editable members are compiled here, as
# the runtime (PYTHONDONTWRITEBYTECODE) never writes bytecode itself.
RUN python -m compileall -qq contracts/src libs/*/src services/*/src

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="crm" \
      org.opencontainers.image.description="Omnichannel retail CDP/CRM: identity, engagement, support and analytics services"

# tini is PID 1: it forwards SIGTERM to Python (which, as PID 1, would ignore a
# signal it installs no handler for) and reaps any child processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# Fixed, non-root ids so Kubernetes runAsUser/fsGroup and volume ownership match.
RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --home-dir /home/crm --create-home \
       --shell /usr/sbin/nologin crm

# In a container an API must listen on all interfaces (the settings default to
# 127.0.0.1 for local mode), and local state goes to the one writable directory.
ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CRM_ENV=production \
    CRM_HTTP_HOST=0.0.0.0 \
    CRM_VAR_DIR=/app/var

WORKDIR /app

# Code and venv belong to root and are read-only for the service user; the only
# writable place the image offers is /app/var (mount a volume there for state that
# must outlive the container, e.g. the resolver's RocksDB tables).
COPY --from=builder /app /app
RUN mkdir -p /app/var && chown crm:crm /app/var

USER 10001:10001

EXPOSE 8001 8002 8003 8004

# `docker run crm engagement relay` runs `python -m engagement relay`.
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m"]
CMD ["identity", "api"]
