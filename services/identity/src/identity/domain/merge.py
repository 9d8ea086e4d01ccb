"""Merge: the record of one merge decision, so it can be explained and undone."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

from identity.domain.customer import DomainError

MERGE_NAMESPACE = uuid.UUID("0e4f3a2b-6c1d-4b8e-9a7f-3d2c1b0a9e88")


class MergeNotFound(DomainError):
    pass


class MergeAlreadyUndone(DomainError):
    pass


class MergeNotUndoable(DomainError):
    """Undo the later merge first: the survivor has since been merged itself."""


def merge_id_for(survivor_id: uuid.UUID, merged_id: uuid.UUID, merged_version: int) -> uuid.UUID:
    return uuid.uuid5(MERGE_NAMESPACE, f"{survivor_id}:{merged_id}:{merged_version}")


class Merge(Aggregate):
    class Created(Aggregate.Created):
        survivor_id: uuid.UUID
        merged_id: uuid.UUID
        moved: list[dict[str, Any]]
        evidence: dict[str, Any]

    @event(Created)
    def __init__(
        self,
        survivor_id: uuid.UUID,
        merged_id: uuid.UUID,
        moved: list[dict[str, Any]],
        evidence: dict[str, Any],
    ) -> None:
        self.survivor_id = survivor_id
        self.merged_id = merged_id
        self.moved = moved
        self.evidence = evidence
        self.undone: dict[str, Any] | None = None

    @classmethod
    def record(
        cls,
        merge_id: uuid.UUID,
        survivor_id: uuid.UUID,
        merged_id: uuid.UUID,
        moved: list[dict[str, Any]],
        evidence: dict[str, Any],
    ) -> Merge:
        return cls._create(
            cls.Created,
            id=merge_id,
            survivor_id=survivor_id,
            merged_id=merged_id,
            moved=moved,
            evidence=evidence,
        )

    class Undone(Aggregate.Event):
        reason: str
        undone_by: str | None
        restored: list[dict[str, Any]]

    def undo(self, reason: str, undone_by: str | None, restored: list[dict[str, Any]]) -> None:
        if self.undone is not None:
            raise MergeAlreadyUndone(f"merge {self.id} was already undone")
        self._undo(reason=reason, undone_by=undone_by, restored=restored)

    @event(Undone)
    def _undo(self, reason: str, undone_by: str | None, restored: list[dict[str, Any]]) -> None:
        self.undone = {"reason": reason, "undone_by": undone_by}
