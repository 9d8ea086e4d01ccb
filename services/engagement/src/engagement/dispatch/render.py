"""Message templates: checked when a campaign is created, rendered per recipient.

Templates are Jinja2 in a sandbox (a template cannot reach Python internals, files or
the network) with ``StrictUndefined``: a template naming a field that does not exist is
refused when the campaign is created (422 naming the variant and the field), never
discovered half-way through a send. The fields are the ones below; ``name`` comes from
identity at send time, the rest are non-personal facts.

A template is code written by staff, so it is bounded like code (docs/engagement.md,
"Template limits"):

* the sandbox (``BoundedEnvironment``) refuses arithmetic that would build a huge value
  before building it: ``*``, ``**``, ``+`` and ``%`` past ``MAX_NUMBER_BITS`` or
  ``MAX_SEQUENCE`` (``'x' * 10**9``, ``9**9**9``), a number argument past
  ``MAX_SEQUENCE`` to any call or filter, and ``range`` past ``MAX_LOOP_ITEMS`` items in
  one render (nested loops count together);
* a rendered part longer than ``MAX_RENDERED_BYTES`` (UTF-8) stops as soon as it is;
* checking and rendering run in worker processes (``TemplateWorkers``): each part has a
  time bound (``CRM_TEMPLATE_TIME_LIMIT_S``), a worker has a memory bound
  (``WORKER_MEMORY_BYTES``), and a worker that does not answer in time is killed and
  replaced, so no template holds the API's event loop or the dispatcher.

Links in a rendered message are rewritten to the click tracker when their host is one
of the campaign's ``link_hosts``; an HTML body also gets the open pixel. The targets are
kept on the message (engagement's store), so a redirect only ever goes to a link the
message really contained. Rewriting happens in the caller's process (``track``): it is
linear in the bounded output and needs the caller's signer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

log = logging.getLogger(__name__)
T = TypeVar("T")

#: What a template may use, with a sample used to try every template at creation.
FIELDS: dict[str, Any] = {
    "name": "山田 太郎",
    "rank": "gold",
    "prefecture": "東京都",
    "age_band": "30s",
    "gender": "female",
    "birth_month": 4,
    "segments": ["loyal"],
    "campaign": "Spring sale",
    "unsubscribe_url": "https://crm.example/t/u/token",
}
TEMPLATE_PARTS = ("subject", "body", "html")
MAX_TEMPLATE_CHARS = 20_000
#: Trackable links per message: a click's link number is 0..999 in the published
#: ``message.clicked`` contract.
MAX_TRACKED_LINKS = 1000
#: One rendered part (subject, text body, HTML body), in UTF-8 bytes. Mail clients clip
#: an HTML body past about 100 kB already.
MAX_RENDERED_BYTES = 256 * 1024
#: The longest string or list a template may build with ``*``, ``+`` or ``%``, and the
#: largest number it may pass to a call or a filter (``'x'.ljust(n)``, ``center(n)``).
MAX_SEQUENCE = MAX_RENDERED_BYTES
#: The largest integer a template may compute (prices, points and counts fit easily).
MAX_NUMBER_BITS = 64
#: Items ``range`` may produce in one render of one part, all calls together: nested
#: loops multiply, so ``range(1000)`` inside ``range(1000)`` is refused.
MAX_LOOP_ITEMS = 10_000
#: Address space of one template worker process.
WORKER_MEMORY_BYTES = 512 * 1024 * 1024
#: A worker's whole check of a campaign may take this many times the per-part bound.
CHECK_TOTAL_FACTOR = 10
#: Beyond a worker's own time bound, how long the caller waits (a worker starting on a
#: busy machine) before it kills the worker and calls the template too slow.
WORKER_SLACK_S = 15.0
#: How long ``TemplateWorkers.start`` waits for its workers.
STARTUP_S = 120.0


class TemplateLimitError(SecurityError):
    """A template past one of the bounds above; the message is the reason."""


class TemplateWorkersUnavailable(RuntimeError):
    """The template workers could not run a call (not the template's fault)."""


class _Timeout(BaseException):
    """Raised in a worker by its alarm: a ``BaseException`` so no ``except Exception``
    on the way (Jinja's, a filter's) swallows it."""


_loop_budget: ContextVar[list[int] | None] = ContextVar("template_loop_budget", default=None)


def _check_number(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SEQUENCE:
        raise TemplateLimitError(f"number argument too large (at most {MAX_SEQUENCE})")


def _check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        _check_number(value)


def _bounded_range(*args: Any) -> range:
    _check_arguments(args, {})
    items = range(*args)
    budget = _loop_budget.get()
    if budget is not None:
        budget[0] -= len(items)
        if budget[0] < 0:
            raise TemplateLimitError(
                f"loops run more than {MAX_LOOP_ITEMS} times (range, all loops together)"
            )
    elif len(items) > MAX_LOOP_ITEMS:
        raise TemplateLimitError(f"range of more than {MAX_LOOP_ITEMS} items")
    return items


def _bounded_filter(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja_pass_arg (pass_context, pass_environment)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)  # the first is the filtered value (or context)
        return f(*args, **kwargs)

    return bounded


_SEQUENCES = (str, list, tuple)
#: a ``%`` conversion's width and precision: ``%(name)-10.3f``
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_binop(operator: str, left: Any, right: Any) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0:
        if _bits(left) > 1 and _bits(left) * right > MAX_NUMBER_BITS:
            raise TemplateLimitError(f"number too large (more than {MAX_NUMBER_BITS} bits)")
    elif operator == "*":
        if ints and _bits(left) + _bits(right) > MAX_NUMBER_BITS + 1:
            raise TemplateLimitError(f"number too large (more than {MAX_NUMBER_BITS} bits)")
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
                raise TemplateLimitError(f"string or list too long (more than {MAX_SEQUENCE} items)")
    elif operator == "+":
        if (
            isinstance(left, _SEQUENCES)
            and isinstance(right, _SEQUENCES)
            and len(left) + len(right) > MAX_SEQUENCE
        ):
            raise TemplateLimitError(f"string or list too long (more than {MAX_SEQUENCE} items)")
    elif operator == "%" and isinstance(left, str):
        for width, precision in _PERCENT_SPEC.findall(left):
            for n in (width, precision):
                if n == "*" or (n and int(n) > MAX_SEQUENCE):
                    raise TemplateLimitError(f"format width too large (at most {MAX_SEQUENCE})")


class BoundedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox with bounded arithmetic, call arguments and ``range`` (the ways
    a short template builds a huge value or a long loop); see the module's docstring."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.filters = {name: _bounded_filter(f) for name, f in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


_text_env = BoundedEnvironment(undefined=StrictUndefined, autoescape=False)
_html_env = BoundedEnvironment(undefined=StrictUndefined, autoescape=True)
#: A link in plain text: only the ASCII characters RFC 3986 allows in a URI (unreserved,
#: reserved and ``%``), so the Japanese text that follows a URL without a space
#: (``…/saleをご覧ください``) is not taken into the link. ``'`` is left out: text quotes URLs.
_URL = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]+")
_HREF = re.compile(r"""(href\s*=\s*["'])(https?://[^"'<>\s]+)(["'])""", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _compiled(source: str, html: bool) -> Template:
    """A template compiled once per source (compiling costs more than rendering)."""
    return (_html_env if html else _text_env).from_string(source)


def render_part(source: str, html: bool, context: Mapping[str, Any]) -> str:
    """One part rendered within the sandbox's bounds and ``MAX_RENDERED_BYTES`` (no time
    bound here: that is the worker's)."""
    template = _compiled(source, html)
    token = _loop_budget.set([MAX_LOOP_ITEMS])
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk.encode())
            if size > MAX_RENDERED_BYTES:
                raise TemplateLimitError(f"output exceeds {MAX_RENDERED_BYTES} bytes")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _loop_budget.reset(token)


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Timeout


@contextlib.contextmanager
def _time_bound(seconds: float | None) -> Iterator[None]:
    """Interrupts the block after ``seconds`` (SIGALRM: a worker's main thread only)."""
    if seconds is None:
        yield
        return
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _reason(exc: BaseException, time_limit_s: float | None) -> str:
    if isinstance(exc, _Timeout):
        return f"template took too long (over {time_limit_s:g} s)"
    if isinstance(exc, MemoryError):
        return "template needs too much memory"
    if isinstance(exc, TemplateLimitError):
        return str(exc)
    if isinstance(exc, TemplateError):
        return f"template error: {exc}"
    return f"template error: {type(exc).__name__}: {exc}"[:300]


def _tracked(text: str, html: bool, hosts: set[str]) -> list[str]:
    """The links of a rendered part that would be click-tracked, in order."""
    found = (m.group(2).replace("&amp;", "&") for m in _HREF.finditer(text)) if html else _URL.findall(text)
    return [url for url in found if (urlsplit(url).hostname or "").lower() in hosts]


def check_templates(
    variants: Sequence[Mapping[str, Any]],
    link_hosts: Sequence[str] = (),
    time_limit_s: float | None = None,
) -> list[tuple[str, str]]:
    """Every problem of the variants' templates as (field path, reason), including more
    than ``MAX_TRACKED_LINKS`` distinct trackable links in a variant (tried with the
    sample fields) and a template past a bound. With ``time_limit_s`` (in a worker's main
    thread: ``TemplateWorkers.check``) each part has that long, and all of them
    ``CHECK_TOTAL_FACTOR`` times that."""
    problems: list[tuple[str, str]] = []
    hosts = {h.lower() for h in link_hosts}
    deadline = None if time_limit_s is None else time.monotonic() + CHECK_TOTAL_FACTOR * time_limit_s
    for i, variant in enumerate(variants):
        links: set[str] = set()
        for part in TEMPLATE_PARTS:
            source = variant.get(part)
            if source is None:
                continue
            where = f"variants.{i}.{part}"
            if len(source) > MAX_TEMPLATE_CHARS:
                problems.append((where, f"at most {MAX_TEMPLATE_CHARS} characters"))
                continue
            env = _html_env if part == "html" else _text_env
            bound = None
            if deadline is not None and time_limit_s is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    total = CHECK_TOTAL_FACTOR * time_limit_s
                    problems.append((where, f"templates took too long together (over {total:g} s)"))
                    return problems
                bound = min(time_limit_s, left)
            try:
                with _time_bound(bound):
                    unknown = sorted(meta.find_undeclared_variables(env.parse(source)) - set(FIELDS))
                    if unknown:
                        problems.append(
                            (
                                where,
                                f"unknown field {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}",
                            )
                        )
                        continue
                    rendered = render_part(source, part == "html", FIELDS)
            except (Exception, _Timeout) as exc:  # every failure of a template is its author's
                problems.append((where, _reason(exc, bound)))
                continue
            if part == "subject" or not hosts:
                continue  # a subject's links are not rewritten
            before = len(links)
            links.update(_tracked(rendered, part == "html", hosts))
            if len(links) > MAX_TRACKED_LINKS >= before:
                problems.append(
                    (where, f"more than {MAX_TRACKED_LINKS} trackable links in variant {variant.get('id')!r}")
                )
    return problems


@dataclass(frozen=True)
class Parts:
    """A variant's parts rendered for one recipient, before link tracking."""

    subject: str | None
    body: str
    html: str | None


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    body: str
    html: str | None
    links: list[str]


def render_parts(
    variant: Mapping[str, Any], context: Mapping[str, Any], time_limit_s: float | None = None
) -> Parts:
    """A variant rendered for one recipient within the bounds; a template past one raises
    ``TemplateLimitError`` naming it. With ``time_limit_s``: a worker's main thread only."""
    try:
        with _time_bound(time_limit_s):
            subject = render_part(variant["subject"], False, context) if variant.get("subject") else None
            body = render_part(variant["body"], False, context)
            html = render_part(variant["html"], True, context) if variant.get("html") else None
    except TemplateLimitError:
        raise
    except (Exception, _Timeout) as exc:
        raise TemplateLimitError(_reason(exc, time_limit_s)) from None
    if subject is not None:  # one line: a line break in a header would be an injection
        subject = " ".join(subject.split())
    return Parts(subject, body, html)


def track(
    parts: Parts,
    *,
    link_hosts: Sequence[str],
    click_url: Callable[[int], str],
    open_url: str | None,
) -> Rendered:
    """The rendered parts with their trackable links rewritten to ``click_url(n)`` and
    the open pixel in the HTML."""
    links: list[str] = []
    hosts = {h.lower() for h in link_hosts}

    def number(url: str) -> int | None:
        host = (urlsplit(url).hostname or "").lower()
        if host not in hosts:
            return None
        if url not in links:
            if len(links) >= MAX_TRACKED_LINKS:  # checked at creation; a template loop may still
                raise TemplateLimitError(f"more than {MAX_TRACKED_LINKS} trackable links")
            links.append(url)
        return links.index(url)

    def in_text(match: re.Match[str]) -> str:
        n = number(match.group(0))
        return match.group(0) if n is None else click_url(n)

    def in_href(match: re.Match[str]) -> str:
        url = match.group(2).replace("&amp;", "&")
        n = number(url)
        return match.group(0) if n is None else f"{match.group(1)}{click_url(n)}{match.group(3)}"

    body = _URL.sub(in_text, parts.body)
    html = parts.html
    if html is not None:
        html = _HREF.sub(in_href, html)
        if open_url:
            pixel = f'<img src="{open_url}" width="1" height="1" alt="" style="display:none">'
            html = html.replace("</body>", pixel + "</body>") if "</body>" in html else html + pixel
    return Rendered(parts.subject, body, html, links)


def render(
    variant: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    link_hosts: Sequence[str],
    click_url: Callable[[int], str],
    open_url: str | None,
) -> Rendered:
    """One recipient's message in this process (the sandbox's bounds, no time bound):
    ``render_parts`` then ``track``. The dispatcher renders in ``TemplateWorkers``."""
    return track(
        render_parts(variant, context), link_hosts=link_hosts, click_url=click_url, open_url=open_url
    )


# -- worker processes ------------------------------------------------------------------


def _worker_init(memory_bytes: int) -> None:
    """A template worker: bounded address space (a huge value is a ``MemoryError``, not
    the machine's memory), and its own alarm for the time bound."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGALRM, _on_alarm)


def _ready() -> bool:
    return True


class TemplateWorkers:
    """A bounded pool of worker processes that check and render templates.

    At most ``workers`` calls run at once (the rest wait their turn, off the event loop);
    each part has ``time_limit_s`` in its worker. A call whose worker does not answer
    within its bound plus ``WORKER_SLACK_S`` (a C-level operation no alarm interrupts)
    has the pool's processes killed and replaced; the other calls in flight then run
    again on the new pool."""

    def __init__(
        self,
        workers: int = 2,
        time_limit_s: float = 1.0,
        memory_bytes: int = WORKER_MEMORY_BYTES,
        slack_s: float = WORKER_SLACK_S,
    ) -> None:
        self.workers = workers
        self.time_limit_s = time_limit_s
        self.memory_bytes = memory_bytes
        self.slack_s = slack_s
        self._pool: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._starting: asyncio.Lock | None = None

    async def _executor(self) -> ProcessPoolExecutor:
        """The pool, its workers started: a call's deadline does not pay for a process
        starting (seconds on a busy machine)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._pool is None:
                # spawn: the API and the dispatcher have threads, which fork would copy mid-state
                pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init,
                    initargs=(self.memory_bytes,),
                )
                # one call each while none is idle: every worker is started
                ready = [asyncio.wrap_future(pool.submit(_ready)) for _ in range(self.workers)]
                try:
                    await asyncio.wait_for(asyncio.gather(*ready), STARTUP_S)
                except (TimeoutError, BrokenProcessPool):
                    self._kill(pool)
                    raise TemplateWorkersUnavailable("the template workers did not start") from None
                self._pool = pool
            return self._pool

    def _kill(self, pool: ProcessPoolExecutor) -> None:
        # ProcessPoolExecutor cannot stop a running call; its processes can be killed
        # (Python 3.14's ``kill_workers`` does this)
        processes = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        if self._pool is pool:
            self._pool = None

    async def _run(self, bound_s: float, fn: Callable[..., T], *args: Any) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        async with self._slots:  # a free worker each: the deadline counts from the start
            for attempt in (1, 2):
                pool = await self._executor()
                try:
                    future: Future[T] = pool.submit(fn, *args)
                    return await asyncio.wait_for(asyncio.wrap_future(future), bound_s + self.slack_s)
                except TimeoutError:
                    log.warning("a template worker did not answer in %.1f s; restarting the pool", bound_s)
                    self._kill(pool)
                    raise TemplateLimitError(f"template took too long (over {bound_s:g} s)") from None
                except _Timeout:  # the alarm went off just after the work
                    raise TemplateLimitError(
                        f"template took too long (over {self.time_limit_s:g} s)"
                    ) from None
                except BrokenProcessPool:  # another call's worker was killed: run again
                    self._kill(pool)
                    if attempt == 2:
                        raise TemplateWorkersUnavailable("the template workers stopped twice") from None
        raise AssertionError("unreachable")

    async def start(self) -> None:
        """Starts the workers now rather than on the first template (a process starting
        on a busy machine may take seconds)."""
        await self._executor()

    async def check(
        self, variants: Sequence[Mapping[str, Any]], link_hosts: Sequence[str] = ()
    ) -> list[tuple[str, str]]:
        """``check_templates`` in a worker, each part within the time bound."""
        return await self._run(
            CHECK_TOTAL_FACTOR * self.time_limit_s,
            check_templates,
            [dict(v) for v in variants],
            list(link_hosts),
            self.time_limit_s,
        )

    async def render_parts(self, variant: Mapping[str, Any], context: Mapping[str, Any]) -> Parts:
        """``render_parts`` in a worker; ``TemplateLimitError`` for a template past a bound."""
        return await self._run(
            self.time_limit_s, render_parts, dict(variant), dict(context), self.time_limit_s
        )

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
