-- Runs once, when the PostgreSQL data volume is first initialised (the official
-- image executes /docker-entrypoint-initdb.d/*.sql as POSTGRES_USER).
--
-- One database per service: each service owns its event store (which is also its
-- outbox) and no service reads another's. The eventsourcing library creates its
-- tables inside these databases on first start.
CREATE DATABASE identity;
CREATE DATABASE engagement;
CREATE DATABASE support;
