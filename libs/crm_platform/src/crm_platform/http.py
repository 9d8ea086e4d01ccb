"""FastAPI app factory shared by every service's API.

It gives each API the same edges: ``/healthz`` (the process is alive) and ``/readyz``
(its dependencies answer: a code per check, never an exception's text, which is logged
here instead), ``/docs``, ``/redoc`` and ``/openapi.json`` (in production only with
``CRM_PUBLIC_DOCS``), request-size limits (413, Starlette's body limit), API-key auth with scopes
(401 unknown/missing key, 403 missing scope), domain errors mapped to HTTP status codes
in exception handlers (routes stay thin), and FastAPI's OpenTelemetry server spans.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_platform.apikeys import MIN_API_KEY_LENGTH, ApiKeyEntry, authenticate, key_table
from crm_platform.process import quiet_gc
from crm_platform.settings import Environment, Settings
from crm_platform.telemetry import current_trace_id

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]


class ApiError(Exception):
    """An error with an HTTP status, raised by dependencies of the shared edge."""

    def __init__(self, status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


class TraceIdHeader:
    """Adds ``X-Trace-Id`` to every response, so a caller (or support staff) can quote it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                trace_id = current_trace_id()
                if trace_id:
                    message["headers"] = [*message.get("headers", []), (b"x-trace-id", trace_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_trace)


@dataclass(frozen=True)
class Principal:
    """The caller an API key stands for: the key's id (never the key) and its scopes."""

    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        service = scope.split(":", 1)[0]
        return bool({"*", scope, f"{service}:*"} & self.scopes)


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key with scopes")


def _key_table(app: FastAPI) -> tuple[ApiKeyEntry, ...]:
    """The configured keys, parsed once per configuration object."""
    settings: Settings = app.state.settings
    cached = getattr(app.state, "api_key_table", None)
    if cached is None or cached[0] is not settings.api_keys:
        cached = (settings.api_keys, key_table(settings.api_keys))
        app.state.api_key_table = cached
    table: tuple[ApiKeyEntry, ...] = cached[1]
    return table


async def _principal(
    request: Request, api_key: Annotated[str | None, Security(_api_key_header)]
) -> Principal:
    if not api_key:
        raise ApiError(401, "unauthenticated", "missing X-API-Key header", {"WWW-Authenticate": "ApiKey"})
    settings: Settings = request.app.state.settings
    # Production refuses short keys before hashing; the hash is compared with every
    # configured digest in constant time (crm_platform.apikeys).
    min_length = MIN_API_KEY_LENGTH if settings.env is Environment.PRODUCTION else 0
    entry = authenticate(_key_table(request.app), api_key, min_length=min_length)
    if entry is None:
        raise ApiError(401, "unauthenticated", "unknown API key", {"WWW-Authenticate": "ApiKey"})
    return Principal(key_id=entry.key_id, scopes=entry.scopes)


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting only callers whose key holds ``scope``."""

    # async: FastAPI would run a plain ``def`` dependency in a worker thread, a
    # needless thread hop per request for work that does no I/O.
    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not principal.allows(scope):
            raise ApiError(403, "forbidden", f"this API key lacks the scope {scope!r}")
        return principal

    return check


def require_any_scope(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers whose key holds at least one of ``scopes`` (a
    broad scope, or a narrower one that is all a given caller needs)."""

    async def check(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not any(principal.allows(s) for s in scopes):
            raise ApiError(403, "forbidden", f"this API key lacks one of the scopes {', '.join(scopes)}")
        return principal

    return check


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by orjson (several times faster than the
    standard library on a batch of events; its decode error is a ``json.JSONDecodeError``,
    so FastAPI's 422 for malformed JSON is unchanged)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    """Route class for routers whose bodies are large JSON (ingestion):
    ``APIRouter(route_class=OrjsonRoute)``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler


def create_app(
    *,
    settings: Settings,
    title: str,
    description: str = "",
    version: str = "0.1.0",
    readiness_checks: Mapping[str, ReadinessCheck] | None = None,
    error_map: Mapping[type[Exception], int] | None = None,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def with_frozen_heap(app: FastAPI) -> AsyncIterator[None]:
        if lifespan is None:
            quiet_gc()
            yield
            return
        async with lifespan(app):
            quiet_gc()
            yield

    docs = settings.serves_docs
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=with_frozen_heap,
        # the API's map: in production only when CRM_PUBLIC_DOCS says so
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        # Starlette's limit: refuses a declared or streamed body past the bound with 413.
        max_body_size=settings.max_request_bytes,
        # FastAPI's own OpenTelemetry: a server span per request, continuing the caller's
        # traceparent. Not a span per dependency and per serialisation step (an ingestion
        # API answers hundreds of requests a second), and not the probes.
        telemetry={
            "operation_spans": False,
            "metrics": False,
            "logs": False,
            "auto_configure": False,  # exporters are crm_platform.telemetry's
            "exclude": _probe,
        },
    )
    app.state.settings = settings
    checks = dict(readiness_checks or {})

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{f['field']}: {f['reason']}" for f in fields[:5])
        return JSONResponse(error_body("invalid_request", summary, fields=fields), status_code=422)

    for exc_type, status in (error_map or {}).items():
        app.add_exception_handler(exc_type, _domain_handler(status))

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: every dependency answers")
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), timeout=3.0)
                results[name] = "ok"
            except TimeoutError:
                log.warning("readiness check %s did not answer within 3 s", name)
                results[name] = "timeout"
            except Exception:
                # the text may name hosts, users or paths: logged here, never answered
                log.warning("readiness check %s failed", name, exc_info=True)
                results[name] = "unavailable"
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": results}, status_code=200 if ok else 503
        )

    app.add_middleware(TraceIdHeader)
    _document_errors(app)
    return app


class FieldProblem(BaseModel):
    field: str | None = Field(description="where: body.x.y, query.name, path.name, header.name")
    reason: str
    type: str | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_request, not_found, forbidden")
    message: str
    fields: list[FieldProblem] | None = Field(default=None, description="the fields at fault (422)")


class ErrorBody(BaseModel):
    """Every error answer of every API: ``{"error": {"code", "message", "fields"?}}``."""

    error: ErrorDetail


_ERROR_RESPONSES: dict[str, str] = {
    "400": "the body could not be read (not UTF-8 / not parseable)",
    "401": "no X-API-Key header, or an unknown key",
    "403": "the key lacks the scope this operation needs",
    "404": "no such resource (the path's, or one the body names)",
    "409": "conflicts with the resource's current state or a concurrent change",
    "413": "the request body is larger than the API takes",
    "422": "invalid request: `error.fields` name each field at fault and why",
}


#: errors the shared edge itself answers (body parsing, size, validation), whatever the
#: route declares for them
_EDGE = frozenset({"400", "413", "422"})


def _document_errors(app: FastAPI) -> None:
    """Make the OpenAPI tell what the edges above answer: every error has the shape of
        ``ErrorBody`` (not FastAPI's ``HTTPValidationError``, which this app never sends);
        an operation behind an API key documents 401 and 403, one with a path parameter 404,
        one with a body 400, 404 (what it names), 413, and a change (POST, PUT, PATCH, DELETE) 409:
    every change goes to an event-sourced aggregate that may be in another state or written
    concurrently. Operations document their own further errors (429, 503...); an operation
    that declares its own body for 400, 413 or 422 (a batch's per-event results) gets either
    that or ``ErrorBody``."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        defs = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(defs.pop("$defs", {}))
        components["ErrorBody"] = defs
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        ref: dict[str, Any] = {"$ref": "#/components/schemas/ErrorBody"}
        for item in schema.get("paths", {}).values():
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                wanted = {"422"} if "422" in responses else set()
                if operation.get("security"):
                    wanted |= {"401", "403"}
                if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                    wanted.add("404")
                if "requestBody" in operation:
                    wanted |= {"400", "404", "413", "422"}
                if method in ("post", "put", "patch", "delete"):
                    wanted.add("409")
                if operation.get("parameters"):
                    wanted.add("422")
                for code, error in responses.items():
                    if code.startswith(("4", "5")) and "content" not in error:
                        wanted.add(code)
                for code in sorted(wanted):
                    given = responses.get(code, {})
                    declared = given.get("content", {}).get("application/json", {}).get("schema")
                    body: dict[str, Any]
                    if declared is None or declared.get("$ref", "").endswith("/HTTPValidationError"):
                        body = ref
                    elif code in _EDGE:  # the route's own answer, or the edge's
                        body = {"anyOf": [declared, ref]}
                    else:
                        continue
                    responses[code] = {
                        "description": given.get("description") or _ERROR_RESPONSES.get(code, "error"),
                        "content": {"application/json": {"schema": body}},
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _probe(scope: Scope) -> bool:
    return scope.get("path") in ("/healthz", "/readyz")


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _domain_handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        code = getattr(exc, "code", None) or _snake(type(exc).__name__)
        return JSONResponse(error_body(code, str(exc)), status_code=status)

    return handle


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
