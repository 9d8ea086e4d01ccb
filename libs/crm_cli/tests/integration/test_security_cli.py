"""``crm keys new-api-key`` makes a key whose hashed entry a service accepts, events
record the key's id, and ``crm audit`` reads who looked at whose personal data — against
identity's API in a process of its own, configured as an operator would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from crm_cli.main import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def _new_key(key_id: str, scopes: str) -> tuple[str, dict[str, object]]:
    result = runner.invoke(app, ["keys", "new-api-key", "--id", key_id, "--scopes", scopes])
    assert result.exit_code == 0, result.output
    key_line, entry_line = result.output.strip().splitlines()
    key = key_line.rsplit(" ", 1)[1]
    entry = json.loads(entry_line.split(": ", 1)[1])
    assert key not in entry_line
    return key, entry


@pytest.fixture
def identity_url(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[str, dict[str, str]]]:
    staff_key, staff = _new_key("staff-desk-1", "identity:read,identity:write,identity:pii")
    auditor_key, auditor = _new_key("dpo", "identity:audit")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / "var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_API_KEYS": json.dumps({**staff, **auditor}),
        "CRM_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "identity.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "identity", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"identity api did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, {"staff": staff_key, "auditor": auditor_key}
    finally:
        process.terminate()
        process.wait(30)


def test_a_new_key_authenticates_decides_as_its_id_and_its_reads_are_audited(
    identity_url: tuple[str, dict[str, str]],
) -> None:
    url, keys = identity_url
    staff = {"X-API-Key": keys["staff"]}
    created = httpx.post(
        f"{url}/customers", json={"channel": "store", "name_kanji": "監査 太郎"}, headers=staff, timeout=10
    )
    assert created.status_code == 201, created.text
    customer = created.json()["customer_id"]
    linked = httpx.post(
        f"{url}/customers/{customer}/identifiers",
        json={"kind": "email", "value": "kansa@example.jp"},
        headers=staff,
        timeout=10,
    )
    assert linked.status_code == 201, linked.text
    why = httpx.get(f"{url}/customers/{customer}/identifiers", headers=staff, timeout=10).json()
    assert why[0]["evidence"]["decided_by"] == "staff-desk-1"  # the key's id, never the key
    assert keys["staff"] not in json.dumps(why)
    assert httpx.get(f"{url}/customers/{customer}", headers={"X-API-Key": "dev-admin-key"}).status_code == 401
    # crm audit: the read of the identifiers, by whom
    result = runner.invoke(
        app,
        ["audit", "--url", url, "--customer", customer, "--json", "--api-key", keys["auditor"]],
    )
    assert result.exit_code == 0, result.output
    entries = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [(e["key_id"], e["purpose"]) for e in entries] == [("staff-desk-1", "identifiers")]
    later = runner.invoke(
        app,
        [
            "audit",
            "--url",
            url,
            "--since",
            "2999-01-01T00:00:00+09:00",
            "--json",
            "--api-key",
            keys["auditor"],
        ],
    )
    assert (later.exit_code, later.output.strip()) == (0, "")
    # the staff key holds no identity:audit
    refused = runner.invoke(app, ["audit", "--url", url, "--api-key", keys["staff"]])
    assert refused.exit_code == 1 and "403" in refused.output
