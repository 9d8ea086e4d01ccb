"""A tiny event-sourced application used to test the outbox relay on real stores.

Imported by the tests and by ``relay_worker.py`` (a separate process that can be killed),
so its stored event topics resolve the same way in both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from crm_contracts.envelope import ContractModel, Event, deterministic_event_id
from crm_platform.relay import StoredFact


class Note(Aggregate):
    @event("Written")
    def __init__(self, text: str) -> None:
        self.text = text


class Notes(Application[uuid.UUID]):
    name = "notes"

    def write(self, text: str) -> uuid.UUID:
        note = Note(text)
        self.save(note)
        return note.id

    def write_many(self, texts: Sequence[str]) -> None:
        self.save(*[Note(t) for t in texts])


class NoteWrittenPayload(ContractModel):
    note_id: uuid.UUID
    text: str


class NoteWritten(Event):
    TOPIC: ClassVar[str] = os.environ.get("CRM_TEST_NOTES_TOPIC", "crm.test.notes")
    event_type: Literal["test.note_written"] = "test.note_written"
    schema_version: Literal[1] = 1
    payload: NoteWrittenPayload


def translate(fact: StoredFact) -> Sequence[Event]:
    domain_event: Any = fact.domain_event
    if not isinstance(domain_event, Note.Written):
        return []
    return [
        NoteWritten(
            event_id=deterministic_event_id(domain_event.timestamp, fact.source, fact.notification_id),
            occurred_at=domain_event.timestamp,
            producer="test.relay",
            customer_key=str(domain_event.originator_id),
            trace=fact.trace,
            payload=NoteWrittenPayload(note_id=domain_event.originator_id, text=domain_event.text),
        )
    ]
