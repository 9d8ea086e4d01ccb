"""``identity_lookup``: who owns each key now, in memory (see ``0002_identity.sql``).

The view that feeds it keeps each key's newest row, so it is right without help; what
it cannot do alone is give memory back: the Join engine keeps an overwritten row's old
copy until the table is rebuilt. ``rebuild`` makes a fresh table from ``identity_map``
(the truth) and swaps it in atomically, so queries never see it half-filled.
"""

from __future__ import annotations

from dataclasses import dataclass

from clickhouse_connect.driver.client import Client


@dataclass(frozen=True)
class LookupSize:
    keys: int
    bytes: int


def size(client: Client) -> LookupSize:
    rows = client.query(
        "SELECT total_rows, total_bytes FROM system.tables"
        " WHERE database = currentDatabase() AND name = 'identity_lookup'"
    ).result_rows
    if not rows:
        return LookupSize(0, 0)
    return LookupSize(int(rows[0][0] or 0), int(rows[0][1] or 0))


def rebuild(client: Client) -> LookupSize:
    """A fresh lookup from identity_map, swapped in for the old one.

    Rows another writer added to the old table while the new one filled are carried
    over afterwards under the same newest-version rule, so a concurrent sink loses
    nothing."""
    client.command("DROP TABLE IF EXISTS identity_lookup_next SYNC")
    client.command("CREATE TABLE identity_lookup_next AS identity_lookup")
    client.command(
        "INSERT INTO identity_lookup_next (key_hash, customer_id, version)"
        " SELECT key_hash, if(is_deleted = 1, toUUID('00000000-0000-0000-0000-000000000000'), customer_id),"
        " version FROM identity_map FINAL"
    )
    client.command("EXCHANGE TABLES identity_lookup AND identity_lookup_next")
    client.command(
        "INSERT INTO identity_lookup (key_hash, customer_id, version)"
        " SELECT key_hash, customer_id, version FROM identity_lookup_next"
        " WHERE version > ifNull(joinGetOrNull('identity_lookup', 'version', key_hash), 0)"
    )
    client.command("DROP TABLE identity_lookup_next SYNC")
    return size(client)


def ensure(client: Client) -> bool:
    """Rebuild when the lookup is empty and the map is not (a schema upgrade, a lost
    file); True when it did."""
    if size(client).keys:
        return False
    mapped = client.query("SELECT count() FROM identity_map").result_rows[0][0]
    if not mapped:
        return False
    rebuild(client)
    return True


__all__ = ["LookupSize", "ensure", "rebuild", "size"]
