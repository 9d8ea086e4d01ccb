"""``crm keys rotate`` on a local var/: every service store's keys re-wrapped under the
current master key, counts printed, idempotent; a missing old key is a clear error."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crm_cli.main import app
from crm_platform.crypto import MasterKeys
from crm_platform.datakeys import KEY_STORES, DataKeys, SQLiteKeyBackend

pytestmark = pytest.mark.integration
OLD, NEW = b"o" * 32, b"n" * 32


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_rotate_rewraps_every_store_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    var = tmp_path / "var"
    sealed = {}
    for store in KEY_STORES[:2]:  # engagement has no store yet: reported, not created
        (var / store.service).mkdir(parents=True)
        keys = DataKeys(SQLiteKeyBackend(str(var / store.service / store.sqlite_file), store.table), OLD, "r")
        records = [uuid.uuid4() for _ in range(3)]
        sealed[store.table] = [(r, keys.seal(r, str(r), "c")) for r in records]
    monkeypatch.setenv("CRM_VAR_DIR", str(var))
    monkeypatch.setenv("CRM_EVENT_STORE", "sqlite")
    monkeypatch.setenv("COLUMNS", "250")  # one line per store in the table
    monkeypatch.setenv("CRM_MASTER_KEY", _b64(NEW))
    monkeypatch.setenv("CRM_MASTER_KEY_VERSION", "2")
    runner = CliRunner()

    missing = runner.invoke(app, ["keys", "rotate"])
    assert missing.exit_code == 1
    assert "master key version 1, which is not configured" in " ".join(missing.output.split())

    monkeypatch.setenv("CRM_MASTER_KEYS_PREVIOUS", f'{{"1": "{_b64(OLD)}"}}')
    first = runner.invoke(app, ["keys", "rotate", "--batch", "2"])
    assert first.exit_code == 0, first.output
    assert first.output.count("v2: 3") == 2 and "no key table yet" in first.output
    assert "the previous master keys can be removed" in first.output
    assert not (var / "engagement" / "surveys.sqlite").exists()
    again = runner.invoke(app, ["keys", "rotate"])
    assert again.exit_code == 0 and again.output.count("│ 0 ") >= 2  # nothing left to re-wrap

    for store in KEY_STORES[:2]:
        keys = DataKeys(
            SQLiteKeyBackend(str(var / store.service / store.sqlite_file), store.table),
            MasterKeys(NEW, 2),
            "r",
        )
        for record, value in sealed[store.table]:
            assert keys.open(record, value, "c") == str(record)
