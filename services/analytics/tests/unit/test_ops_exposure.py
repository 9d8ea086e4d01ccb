"""Production serves analytics' ``/metrics`` and the API docs only when told to
(``CRM_PUBLIC_METRICS``, ``CRM_PUBLIC_DOCS``). The routes are decided when the app is
built, so the app is not started here (no ClickHouse needed)."""

from __future__ import annotations

import base64
from pathlib import Path

from analytics.entrypoints.api import create
from crm_platform.capability import new_signing_key
from crm_platform.settings import Settings

PRODUCTION: dict[str, object] = {
    "env": "production",
    "blind_index_key": base64.b64encode(b"b" * 32).decode(),
    "master_key": base64.b64encode(b"m" * 32).decode(),
    "api_keys": {"k-123": {"sha256": "ab" * 32, "scopes": ["analytics:read"]}},
    "contact_verify_key": new_signing_key()[1],
    "clickhouse_url": "http://crm:pw@clickhouse:8123/crm",
}


def paths(**settings: object) -> set[str]:
    app = create(Settings(**settings), embedded_sink=False)  # type: ignore[arg-type]
    return {getattr(route, "path", "") for route in app.routes}


def test_production_serves_metrics_and_docs_only_when_told(tmp_path: Path) -> None:
    hidden = paths(var_dir=tmp_path, **PRODUCTION)
    assert "/metrics" not in hidden and "/docs" not in hidden and "/openapi.json" not in hidden
    assert {"/healthz", "/readyz", "/"} <= hidden
    told = paths(var_dir=tmp_path, public_metrics=True, public_docs=True, **PRODUCTION)
    assert {"/metrics", "/docs", "/redoc", "/openapi.json"} <= told
    assert {"/metrics", "/docs"} <= paths(var_dir=tmp_path)  # development
