"""The dispatcher's consent view, and the decision whether a recipient may be messaged.

Consent lives in identity: ``customer.consent_changed`` on ``crm.identity.customer``,
and every unified profile on ``crm.identity.profile`` carries the customer's consents
per channel. The dispatcher follows the profile topic (its own consumer group) into a
small SQLite table — customer → status and consents — and decides from it first. At
send time identity's own answer (``POST /messages/{id}/contact`` with the message's
signed capability, which also gives the address) is checked too, and a local opt-out
(an unsubscribe recorded in engagement's store a moment ago, perhaps not yet through
identity and the resolver) wins over both. Any "no" is a no: a message goes out only
when nothing says otherwise and identity says yes.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from crm_contracts.events.identity import ProfileSnapshot


class ConsentView:
    """customer → status, consents and non-personal attributes, from profile snapshots."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # blind indexes: deleted rows are zeroed
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS consent (customer_id TEXT PRIMARY KEY, status TEXT NOT NULL,"
            " merged_into TEXT, consents BLOB NOT NULL, attributes BLOB NOT NULL, version TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS consent_merged_into ON consent (merged_into)"
            " WHERE merged_into IS NOT NULL"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def apply(self, snapshot: ProfileSnapshot) -> bool:
        """Keep the newest profile of a customer (by its recorded time); False if older."""
        p = snapshot.payload
        consents = {c.channel.value: {"granted": c.granted, "at": c.at.isoformat()} for c in p.consents}
        attributes = p.attributes.model_dump(
            mode="json", include={"gender", "birth_year", "birth_month", "prefecture"}
        )
        version = snapshot.recorded_at.isoformat()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO consent VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(customer_id) DO UPDATE SET"
                " status = excluded.status, merged_into = excluded.merged_into,"
                " consents = excluded.consents, attributes = excluded.attributes, version = excluded.version"
                " WHERE excluded.version >= consent.version",
                (
                    str(p.customer_id),
                    p.status,
                    str(p.merged_into) if p.merged_into else None,
                    orjson.dumps(consents),
                    orjson.dumps(attributes),
                    version,
                ),
            )
            return cursor.rowcount > 0

    def attributes(self, customer_id: uuid.UUID) -> dict[str, Any]:
        """The non-personal attributes of the last profile (gender, birth year and month,
        prefecture); empty when never seen."""
        with self._lock:
            row = self._db.execute(
                "SELECT attributes FROM consent WHERE customer_id = ?", (str(customer_id),)
            ).fetchone()
        return dict(orjson.loads(row[0])) if row else {}

    def absorbed(self, customer_id: uuid.UUID) -> list[uuid.UUID]:
        """The customers merged into this one (directly or through others), as the
        profiles said."""
        with self._lock:
            rows = self._db.execute(
                "WITH RECURSIVE absorbed(id, depth) AS ("
                " SELECT customer_id, 1 FROM consent WHERE merged_into = ?"
                " UNION SELECT c.customer_id, a.depth + 1 FROM consent c JOIN absorbed a"
                " ON c.merged_into = a.id WHERE a.depth < 16)"  # a bound against a cycle
                " SELECT DISTINCT id FROM absorbed LIMIT 1000",
                (str(customer_id),),
            ).fetchall()
        return [uuid.UUID(r[0]) for r in rows if r[0] != str(customer_id)]

    def lookup(self, customer_id: uuid.UUID) -> tuple[str, dict[str, bool]] | None:
        """(status, {channel: granted}) as the last profile said; None: never seen."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, consents FROM consent WHERE customer_id = ?", (str(customer_id),)
            ).fetchone()
        if row is None:
            return None
        return row[0], {ch: bool(c["granted"]) for ch, c in orjson.loads(row[1]).items()}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None = None


def decide(
    channel: str,
    *,
    opted_out: bool,
    view: tuple[str, dict[str, bool]] | None,
    identity_status: str | None,
    identity_consent: bool | None,
    address: str | None,
) -> Verdict:
    """May this channel be used? The first "no" names the reason a recipient is skipped.

    ``identity_status`` None: identity does not know the customer."""
    if opted_out:
        return Verdict(False, "opted_out")
    if view is not None:
        status, consents = view
        if status in ("erased", "merged"):
            return Verdict(False, "customer_inactive")
        if consents.get(channel) is False:
            return Verdict(False, "no_consent")
    if identity_status is None:
        return Verdict(False, "unknown_customer")
    if identity_status != "active":
        return Verdict(False, "customer_inactive")
    if identity_consent is not True:
        return Verdict(False, "no_consent")
    if not address:
        return Verdict(False, "no_address")
    return Verdict(True)
