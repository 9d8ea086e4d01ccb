from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from crm_platform.settings import Settings
from identity.bootstrap import Identity, build
from identity.entrypoints.api import create


@pytest.fixture
def identity(store_settings: Settings) -> Iterator[Identity]:
    ident = build(store_settings)
    yield ident
    ident.close()


@pytest.fixture
def client(store_settings: Settings, identity: Identity) -> Iterator[TestClient]:
    with TestClient(create(store_settings, identity)) as c:
        c.headers["X-API-Key"] = "dev-admin-key"
        yield c
