"""Message templates: checked when a campaign is created, rendered per recipient.

Templates are Jinja2 in a ``SandboxedEnvironment`` (a template cannot reach Python
internals, files or the network) with ``StrictUndefined``: a template naming a field
that does not exist is refused when the campaign is created (422 naming the variant and
the field), never discovered half-way through a send. The fields are the ones below;
``name`` comes from identity at send time, the rest are non-personal facts.

Links in a rendered message are rewritten to the click tracker when their host is one
of the campaign's ``link_hosts``; an HTML body also gets the open pixel. The targets are
kept on the message (engagement's store), so a redirect only ever goes to a link the
message really contained.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

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

_text_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_html_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
#: A link in plain text: only the ASCII characters RFC 3986 allows in a URI (unreserved,
#: reserved and ``%``), so the Japanese text that follows a URL without a space
#: (``…/saleをご覧ください``) is not taken into the link. ``'`` is left out: text quotes URLs.
_URL = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%]+")
_HREF = re.compile(r"""(href\s*=\s*["'])(https?://[^"'<>\s]+)(["'])""", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _compiled(source: str, html: bool) -> Template:
    """A template compiled once per source (compiling costs more than rendering)."""
    return (_html_env if html else _text_env).from_string(source)


def _tracked(text: str, html: bool, hosts: set[str]) -> list[str]:
    """The links of a rendered part that would be click-tracked, in order."""
    found = (m.group(2).replace("&amp;", "&") for m in _HREF.finditer(text)) if html else _URL.findall(text)
    return [url for url in found if (urlsplit(url).hostname or "").lower() in hosts]


def check_templates(
    variants: Sequence[Mapping[str, Any]], link_hosts: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Every problem of the variants' templates as (field path, reason), including more
    than ``MAX_TRACKED_LINKS`` distinct trackable links in a variant (tried with the
    sample fields)."""
    problems: list[tuple[str, str]] = []
    hosts = {h.lower() for h in link_hosts}
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
            try:
                unknown = sorted(meta.find_undeclared_variables(env.parse(source)) - set(FIELDS))
                if unknown:
                    problems.append(
                        (where, f"unknown field {', '.join(map(repr, unknown))}; known: {', '.join(FIELDS)}")
                    )
                    continue
                rendered = env.from_string(source).render(FIELDS)
            except TemplateError as exc:
                problems.append((where, f"template error: {exc}"))
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
class Rendered:
    subject: str | None
    body: str
    html: str | None
    links: list[str]


def render(
    variant: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    link_hosts: Sequence[str],
    click_url: Callable[[int], str],
    open_url: str | None,
) -> Rendered:
    """One recipient's message, its trackable links rewritten to ``click_url(n)``."""
    subject = _compiled(variant["subject"], False).render(context) if variant.get("subject") else None
    if subject is not None:  # one line: a line break in a header would be an injection
        subject = " ".join(subject.split())
    body = _compiled(variant["body"], False).render(context)
    html = _compiled(variant["html"], True).render(context) if variant.get("html") else None
    links: list[str] = []
    hosts = {h.lower() for h in link_hosts}

    def number(url: str) -> int | None:
        host = (urlsplit(url).hostname or "").lower()
        if host not in hosts:
            return None
        if url not in links:
            if len(links) >= MAX_TRACKED_LINKS:  # checked at creation; a template loop may still
                raise TemplateError(f"more than {MAX_TRACKED_LINKS} trackable links")
            links.append(url)
        return links.index(url)

    def in_text(match: re.Match[str]) -> str:
        n = number(match.group(0))
        return match.group(0) if n is None else click_url(n)

    def in_href(match: re.Match[str]) -> str:
        url = match.group(2).replace("&amp;", "&")
        n = number(url)
        return match.group(0) if n is None else f"{match.group(1)}{click_url(n)}{match.group(3)}"

    body = _URL.sub(in_text, body)
    if html is not None:
        html = _HREF.sub(in_href, html)
        if open_url:
            pixel = f'<img src="{open_url}" width="1" height="1" alt="" style="display:none">'
            html = html.replace("</body>", pixel + "</body>") if "</body>" in html else html + pixel
    return Rendered(subject, body, html, links)
