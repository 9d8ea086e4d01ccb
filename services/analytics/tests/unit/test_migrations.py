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
    assert "FROM crm.order_lines_all AS l FINAL" in ddl
    assert "\nINSERT" not in ddl and "-- INSERT INTO order_lines" in ddl  # backfills per shard, by hand
    assert " MergeTree" not in ddl.replace("ReplacingMergeTree", "").replace("Distributed", "")
    role = m.readonly_role()
    assert "GRANT SELECT ON crm.bi_orders TO bi_reader;" in role and "readonly = 1" in role
    assert "GRANT SELECT ON crm.bi_order_lines TO bi_reader;" in role


def test_order_lines_are_backfilled_from_the_events_a_store_already_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import factory as f

    from analytics.sink import encode_row, insert_rows
    from crm_contracts.registry import encode

    order = f.store_order("hana", "2026-05-01", "S-1", ("tops", 2, 1990), ("bags", 1, 9900))
    events = [order, f.returned(order, "2026-05-03", 1990), f.viewed("hana", f.at("2026-05-01"))]
    rows = [encode_row(e.TOPIC, 0, i, encode(e)) for i, e in enumerate(events)]
    all_migrations = m.migrations()
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    try:
        monkeypatch.setattr(m, "migrations", lambda: [x for x in all_migrations if x.version < 4])
        m.migrate(client)  # a store from before order lines...
        insert_rows(client, rows)
        insert_rows(client, rows)  # ...that got every record twice
        monkeypatch.setattr(m, "migrations", lambda: all_migrations)
        assert next(x.name for x in m.migrate(client)) == "order_lines"  # later migrations follow
        lines = client.query(
            "SELECT order_id, line_no, kind, sku, quantity, unit_price, amount FROM order_lines FINAL"
            " ORDER BY kind, line_no"
        ).result_rows
        assert lines == [
            ("S-1", 1, "order", "tops-1990", 2, 1990, 3980),
            ("S-1", 2, "order", "bags-9900", 1, 9900, 9900),
            ("S-1", 1, "return", "tops-1990", -1, 0, -1990),
        ]
        # From now on the view keeps them, and a re-delivery still counts once.
        later = f.store_order("hana", "2026-05-09", "S-2", ("shoes", 1, 7990))
        insert_rows(client, [encode_row(later.TOPIC, 0, 9, encode(later))] * 2)
        assert client.query(
            "SELECT count(), sum(amount) FROM bi_order_lines WHERE order_id = 'S-2'"
        ).result_rows == [(1, 7990)]
    finally:
        client.close()
