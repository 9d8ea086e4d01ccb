"""Structured logs with the trace id of the current span, on stderr."""

from __future__ import annotations

import logging
import sys

from crm_platform.telemetry import current_trace_id


class _RoutineNoise(logging.Filter):
    """Demotes messages that are routine, not faults: a consumer asking for its group
    coordinator while a fresh broker is still creating ``__consumer_offsets`` (aiokafka
    logs each retry as an error), and Faust's producer flushing a full buffer under load
    (back-pressure working as meant)."""

    ROUTINE = ("GroupCoordinatorNotAvailableError", "Marking the coordinator dead", "producer buffer full")
    SOURCES = ("aiokafka.consumer.group_coordinator", "faust.transport.producer")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in self.SOURCES or logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return True
        message = record.getMessage()
        return not any(routine in message for routine in self.ROUTINE)


class _TraceIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id() or "-"
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RoutineNoise())
    handler.addFilter(_TraceIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # "producer flush took 0.02 s", once per flush
    logging.getLogger("faust.transport.producer").setLevel(logging.WARNING)
    # one line per outbound request (the dispatcher asks identity for every recipient);
    # failures reach the callers, which log them with their reason
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # aiosmtpd logs every SMTP session of the local mail sink
    logging.getLogger("mail.log").setLevel(logging.WARNING)
