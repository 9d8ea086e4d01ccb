"""The ClickHouse schema as versioned migrations: ``sql/NNNN_name.sql`` applied in
order and recorded in ``schema_migrations`` (version, name, checksum). Applying is
idempotent; an applied migration whose file changed is refused, never silently re-run.

``render`` turns the same files into DDL for a replicated cluster (Replicated*MergeTree
``ON CLUSTER`` plus a Distributed table per fact table) for when users outgrow one node.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        return split_statements(self.sql)


class MigrationDrift(RuntimeError):
    """An applied migration's file no longer matches what was applied."""


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("analytics.store.sql").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Statements of a file: ``--`` comments dropped, split on ``;`` at a line's end."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip()]


def migrate(client: Client) -> list[Migration]:
    """Apply what is not applied yet; returns what was applied now."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String,"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
    )
    applied = {
        row[0]: row[1] for row in client.query("SELECT version, checksum FROM schema_migrations").result_rows
    }
    done = []
    for migration in migrations():
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                raise MigrationDrift(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied;"
                    " add a new migration instead of editing an applied one"
                )
            continue
        for statement in migration.statements():
            client.command(statement)
        # A statement, not client.insert: that makes clickhouse-connect import pandas,
        # a second of every fresh start (the API's, the sink's, a replay's).
        client.command(
            "INSERT INTO schema_migrations (version, name, checksum)"
            " VALUES ({version:UInt32}, {name:String}, {checksum:String})",
            parameters={"version": migration.version, "name": migration.name, "checksum": migration.checksum},
        )
        done.append(migration)
    return done


_ENGINE = re.compile(r"ENGINE\s*=\s*(Replacing|Aggregating|Summing)?MergeTree(?:\((.*?)\))?", re.S)
_TABLE_REF = re.compile(r"\b(FROM|JOIN) (events|orders|order_lines|identity_map|customers)\b")
_CREATE = re.compile(r"^CREATE (TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS (\w+)", re.M)


def render(cluster: str, database: str = "crm") -> str:
    """The schema as DDL for a replicated, sharded cluster named ``cluster``.

    Each MergeTree becomes its Replicated* twin with the usual ``{shard}``/``{replica}``
    macros, every statement runs ``ON CLUSTER``, and each fact table gets a Distributed
    table (``<name>_all``, sharded by person_key so one customer stays on one shard)
    that queries read from.

    ``identity_lookup`` (a Join table, in memory) stays per node and follows the inserts
    that node receives through its materialised view: on a replicated cluster run a sink
    against each replica (each with its own consumer group), or rebuild a node's lookup
    from the replicated identity_map (``python -m analytics rebuild-lookup``).
    """
    out = [f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster};"]
    for migration in migrations():
        out.append(f"-- {migration.version:04d}_{migration.name}")
        for original in migration.statements():
            statement = original
            if statement.startswith("INSERT"):
                # A backfill reads and writes one node's local tables: on a cluster it
                # runs on one replica of every shard (the rows then replicate).
                commented = statement.replace("\n", "\n-- ")
                out.append("-- backfill, run on one replica of each shard:\n-- " + commented)
                continue
            created = _CREATE.search(statement)
            if created:
                kind, name = created.groups()
                statement = statement.replace(
                    created[0], f"CREATE {kind} IF NOT EXISTS {database}.{name} ON CLUSTER {cluster}", 1
                )

            def replicated(match: re.Match[str]) -> str:
                family = match[1] or ""
                args = ["'/clickhouse/tables/{shard}/{database}/{table}'", "'{replica}'"]
                if match[2]:
                    args.append(match[2])
                return f"ENGINE = Replicated{family}MergeTree({', '.join(args)})"

            statement = _ENGINE.sub(replicated, statement)
            statement = statement.replace("'identity_lookup'", f"'{database}.identity_lookup'")
            if created and created[1] == "VIEW":
                # A plain view reads the whole cluster: its tables' Distributed twins.
                statement = _TABLE_REF.sub(lambda m: f"{m[1]} {database}.{m[2]}_all", statement)
            out.append(statement + ";")
            if (
                created
                and created[1] == "TABLE"
                and "ENGINE = Null" not in statement
                and "MergeTree" in statement
            ):
                name = created[2]
                key = "cityHash64(person_key)" if "person_key" in statement else "rand()"
                out.append(
                    f"CREATE TABLE IF NOT EXISTS {database}.{name}_all ON CLUSTER {cluster}"
                    f" AS {database}.{name}"
                    f" ENGINE = Distributed({cluster}, {database}, {name}, {key});"
                )
    return "\n\n".join(out) + "\n"


def readonly_role(database: str = "crm", role: str = "bi_reader") -> str:
    """DDL of the read-only role BI tools connect with on a server deployment: SELECT on
    the bi_* views only, read-only profile, bounded queries."""
    views = ("bi_orders", "bi_order_lines", "bi_events", "bi_customers")
    grants = "\n".join(f"GRANT SELECT ON {database}.{v} TO {role};" for v in views)
    return (
        f"CREATE ROLE IF NOT EXISTS {role};\n"
        f"CREATE SETTINGS PROFILE IF NOT EXISTS {role}_profile SETTINGS readonly = 1,"
        f" max_execution_time = 60, max_memory_usage = 4000000000, max_result_rows = 1000000 TO {role};\n"
        f"{grants}\n"
        f"-- then: CREATE USER <name> IDENTIFIED WITH sha256_password BY '<secret>' DEFAULT ROLE {role};\n"
    )
