"""Identity domain model: pure Python and ``eventsourcing.domain`` only (import-linter)."""
