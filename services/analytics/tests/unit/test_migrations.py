"""The migrations: ordered, recorded, refused when an applied one changed; the cluster render."""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect
import pytest

from analytics.store import migrations as m


def test_files_are_ordered_and_split_into_statements() -> None:
    found = m.migrations()
    assert [x.version for x in found] == sorted(x.version for x in found)
    assert found[0].version == 1
    statements = found[0].statements()
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS events_queue")
    assert not any(s.startswith("--") or s.endswith(";") for s in statements)


def test_migrate_applies_once_and_refuses_an_edited_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        applied = m.migrate(client)
        assert [x.version for x in applied] == [x.version for x in m.migrations()]
        assert m.migrate(client) == []
        rows = client.query("SELECT version, checksum FROM schema_migrations ORDER BY version").result_rows
        assert rows == [(x.version, x.checksum) for x in m.migrations()]

        edited = [m.Migration(x.version, x.name, x.sql + "\n-- edited\n") for x in m.migrations()]
        monkeypatch.setattr(m, "migrations", lambda: edited)
        with pytest.raises(m.MigrationDrift, match="changed after it was applied"):
            m.migrate(client)
    finally:
        client.close()


def test_cluster_render_is_replicated_and_distributed() -> None:
    ddl = m.render("retail", database="crm")
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')"
        in ddl
    )
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', version)"
        in ddl
    )
    assert "CREATE TABLE IF NOT EXISTS crm.events ON CLUSTER retail" in ddl
    assert "ENGINE = Distributed(retail, crm, orders, cityHash64(person_key))" in ddl
    assert "FROM crm.orders_all" in ddl  # views read the whole cluster
    assert " MergeTree" not in ddl.replace("ReplacingMergeTree", "").replace("Distributed", "")
    role = m.readonly_role()
    assert "GRANT SELECT ON crm.bi_orders TO bi_reader;" in role and "readonly = 1" in role
