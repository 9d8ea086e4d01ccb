"""Compaction of quiet partitions of ``orders``, the table every KPI reads.

Queries read ``orders`` with FINAL (a re-delivered record must not count twice), which
costs a merge of the parts that overlap. A partition (a month) whose parts are merged
into one is read as it is (``do_not_merge_across_partitions_select_final``, see
``store.clickhouse.READ_SETTINGS``). ClickHouse's background merges get most of the way; a
partition that has been quiet for a while — a month that ended, a late return that
landed in it — is merged into one part here (``OPTIMIZE … PARTITION … FINAL``, the
ReplacingMergeTree routine ClickHouse's documentation describes), so FINAL keeps its
cost on the month still being written.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

TABLE = "orders"


def compact(client: Client, *, quiet_s: float = 600.0, spare_latest: int = 0) -> list[str]:
    """Merge into one part every partition of ``orders`` that has several parts and no
    new part for ``quiet_s`` seconds; ``spare_latest`` newest partitions are left alone
    whatever their state. Returns the partitions compacted."""
    rows = client.query(
        "SELECT partition_id, count() AS parts, dateDiff('second', max(modification_time), now()) AS quiet"
        " FROM system.parts WHERE database = currentDatabase() AND table = {table:String} AND active"
        " GROUP BY partition_id ORDER BY partition_id",
        parameters={"table": TABLE},
    ).result_rows
    candidates = rows[: len(rows) - spare_latest] if spare_latest else rows
    done = []
    for partition_id, parts, quiet in candidates:
        if parts > 1 and quiet >= quiet_s:
            pid = str(partition_id)
            if not pid.isalnum():  # ClickHouse's own ids are digits (toYYYYMM); never splice anything else
                raise ValueError(f"unexpected partition id {pid!r}")
            client.command(f"OPTIMIZE TABLE {TABLE} PARTITION ID '{pid}' FINAL")
            done.append(pid)
    return done


__all__ = ["compact"]
