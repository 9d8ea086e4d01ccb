"""The support domain: tickets, SLA and routing rules. Standard library and eventsourcing only."""
