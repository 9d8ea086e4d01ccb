"""OpenTelemetry setup and trace-context propagation through Kafka headers.

One trace follows a request from the HTTP call through the event store, the relay and
Kafka to every consumer: producers put the W3C ``traceparent`` in the record headers,
consumers continue the trace from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

KafkaHeaders = Sequence[tuple[str, bytes]]

_provider: TracerProvider | None = None


def setup_tracing(
    service_name: str,
    *,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Install the global tracer provider once per process.

    ``exporter`` (e.g. :class:`InMemorySpanExporter` in tests) is exported synchronously;
    an OTLP endpoint is exported in batches.
    """
    global _provider  # noqa: PLW0603 - one provider per process is OpenTelemetry's model
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        trace.set_tracer_provider(_provider)
    if exporter is not None:
        _provider.add_span_processor(SimpleSpanProcessor(exporter))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        _provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces"))
        )
    return _provider


def in_memory_exporter(service_name: str = "test") -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    setup_tracing(service_name, exporter=exporter)
    return exporter


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def headers_from_carrier(carrier: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in carrier.items() if k in ("traceparent", "tracestate")]


def inject_headers() -> list[tuple[str, bytes]]:
    """Kafka headers carrying the active trace context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return headers_from_carrier(carrier)


def carrier_from_headers(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("latin-1") for k, v in headers or () if k in ("traceparent", "tracestate")}


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context a Kafka record was produced under."""
    return propagate.extract(carrier_from_headers(headers))


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
