"""Campaigns on their own: variant rules, holdout, templates, tokens and consent decisions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from jinja2 import TemplateError

from engagement.dispatch.consent import decide
from engagement.dispatch.render import check_templates, render
from engagement.domain.campaign import (
    Campaign,
    CampaignStateError,
    CustomerFacts,
    InvalidCampaign,
    Message,
    age_band,
    choose_variant,
    in_holdout,
    message_id,
    parse_rules,
    validate_plan,
)
from engagement.tracking import InvalidToken, TrackingSigner

T0 = datetime(2026, 4, 10, 3, tzinfo=UTC)
VARIANTS = [
    {"id": "gold-bday", "subject": "{{ name }}様 お誕生日おめでとう", "body": "ゴールド会員特典"},
    {"id": "tokyo", "subject": "東京店", "body": "東京の{{ name }}様へ"},
    {"id": "young", "subject": "new", "body": "20代向け"},
    {"id": "default", "subject": "ご案内", "body": "{{ name }}様"},
]
RULES = parse_rules(
    [
        {"variant": "gold-bday", "when": {"rank": ["gold", "platinum"], "birthday_month": ["current"]}},
        {"variant": "tokyo", "when": {"prefecture": ["東京都"]}},
        {"variant": "young", "when": {"age_band": ["20s"], "segment": ["new", "repeat"]}},
    ]
)


def campaign(**changes: object) -> Campaign:
    spec: dict[str, object] = {
        "name": "Spring",
        "channels": ["email"],
        "audience": {"segment": "loyal"},
        "variants": VARIANTS,
        "rules": [],
        "default_variant": "default",
        "send_at": T0,
        "holdout_pct": 10.0,
        "attribution_days": 14,
        "quiet_hours": [21, 8],
        "link_hosts": ["shop.example.jp"],
        "created_at": T0,
    }
    spec.update(changes)
    return Campaign.create(**spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (CustomerFacts(rank="gold", birth_month=4, prefecture="東京都"), "gold-bday"),  # first match wins
        (CustomerFacts(rank="gold", birth_month=5, prefecture="東京都"), "tokyo"),  # not this month
        (CustomerFacts(rank="silver", birth_month=4, prefecture="大阪府"), "default"),
        (CustomerFacts(age_band="20s", segments=frozenset({"repeat"})), "young"),
        (CustomerFacts(age_band="20s", segments=frozenset({"dormant"})), "default"),  # all conditions hold
        (CustomerFacts(), "default"),
    ],
)
def test_the_first_matching_rule_chooses_the_variant(facts: CustomerFacts, expected: str) -> None:
    assert choose_variant(RULES, "default", facts, month=4) == expected


def test_rank_none_matches_customers_who_are_not_members() -> None:
    rules = parse_rules([{"variant": "join", "when": {"rank": ["none"]}}])
    assert choose_variant(rules, "d", CustomerFacts(rank=None), 1) == "join"
    assert choose_variant(rules, "d", CustomerFacts(rank="regular"), 1) == "d"


def test_age_bands() -> None:
    assert [age_band(y, 2026) for y in (2010, 2000, 1996, 1986, 1970, 1960, None)] == [
        "under20",
        "20s",
        "30s",
        "40s",
        "50s",
        "60plus",
        "unknown",
    ]


def test_plan_problems_name_their_fields() -> None:
    problems = dict(
        validate_plan(
            ["email", "fax"],
            [{"id": "a", "body": "x"}, {"id": "a", "subject": "s", "body": "y"}],
            [{"variant": "b", "when": {"colour": ["red"]}}, {"variant": "a", "when": {}}],
            "z",
            60,
        )
    )
    assert "channels.1" in problems
    assert problems["variants"] == "variant ids must be unique"
    assert "default_variant" in problems
    assert "variants.0.subject" in problems  # e-mail needs a subject
    assert "rules.0.variant" in problems
    assert "rules.0.when.colour" in problems
    assert "rules.1.when" in problems
    assert "holdout_pct" in problems
    with pytest.raises(InvalidCampaign):
        campaign(default_variant="nope")


def test_holdout_is_deterministic_and_near_its_share() -> None:
    cid = uuid.uuid4()
    customers = [uuid.uuid4() for _ in range(4000)]
    held = [c for c in customers if in_holdout(cid, c, 10)]
    assert 300 < len(held) < 500
    assert held == [c for c in customers if in_holdout(cid, c, 10)]
    assert not any(in_holdout(cid, c, 0) for c in customers[:100])


def test_launch_freezes_the_audience_once() -> None:
    c = campaign()
    ids = [uuid.uuid4() for _ in range(50)]
    c.launch([*ids, ids[0]], T0)
    assert c.status == "launched"
    assert {r.customer_id for r in c.recipients} == set(ids)  # duplicates dropped
    assert sum(r.holdout for r in c.recipients) == sum(in_holdout(c.id, i, 10) for i in ids)
    with pytest.raises(CampaignStateError):
        c.launch(ids, T0)
    c.pause(T0)
    assert not c.is_due(T0)
    c.resume(T0)
    assert c.is_due(T0)
    c.cancel(T0, "wrong offer")
    with pytest.raises(CampaignStateError):
        c.resume(T0)


def test_quiet_hours_wrap_midnight() -> None:
    c = campaign()
    assert [c.in_quiet_hours(h) for h in (20, 21, 23, 0, 7, 8, 12)] == [
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert not campaign(quiet_hours=None).in_quiet_hours(23)


def test_message_ids_make_one_message_per_recipient() -> None:
    cid, customer = uuid.uuid4(), uuid.uuid4()
    prepared = Message.prepare(cid, customer, "email", "default", ["https://shop.example.jp/a"], T0)
    assert prepared.id == message_id(cid, customer) == Message.skip(cid, customer, "holdout", T0).id
    prepared.mark_sent(T0, 1)
    with pytest.raises(CampaignStateError):
        prepared.mark_sent(T0, 1)
    assert prepared.open(T0) and not prepared.open(T0)
    assert prepared.click(0, T0) and not prepared.click(0, T0)
    assert not prepared.click(1, T0)  # the message had one link


def test_a_click_implies_an_open() -> None:
    m = Message.prepare(uuid.uuid4(), uuid.uuid4(), "email", "v", ["https://shop.example.jp/"], T0)
    m.mark_sent(T0, 1)
    assert m.click(0, T0)
    assert m.opened_at == T0


def test_templates_naming_unknown_fields_are_refused_by_name() -> None:
    problems = check_templates(
        [
            {"id": "a", "subject": "{{ name }}", "body": "{{ nickname }}様 {{ rank }}"},
            {"id": "b", "body": "{% if %}"},
            {"id": "c", "body": "{{ name.__class__.__mro__ }}"},
            {"id": "d", "body": "{{ name }} {{ campaign }} {{ unsubscribe_url }}"},
        ]
    )
    fields = dict(problems)
    assert "'nickname'" in fields["variants.0.body"]
    assert "variants.0.subject" not in fields
    assert "variants.1.body" in fields
    assert "variants.2.body" in fields  # the sandbox refuses reaching into Python
    assert "variants.3.body" not in fields


def test_rendering_personalises_escapes_html_and_tracks_allowed_links() -> None:
    variant = {
        "id": "v",
        "subject": "{{ name }}様へ",
        "body": "{{ name }}様 https://shop.example.jp/sale?x=1 https://other.example.com/",
        "html": '<p>{{ name }}</p><a href="https://shop.example.jp/sale?x=1">sale</a></body>',
    }
    out = render(
        variant,
        {"name": "<b>山田</b>"},
        link_hosts=["shop.example.jp"],
        click_url=lambda n: f"https://t.example/c/{n}",
        open_url="https://t.example/o.gif",
    )
    assert out.subject == "<b>山田</b>様へ"
    assert out.body == "<b>山田</b>様 https://t.example/c/0 https://other.example.com/"
    assert out.html is not None
    assert "&lt;b&gt;山田&lt;/b&gt;" in out.html
    assert 'href="https://t.example/c/0"' in out.html
    assert '<img src="https://t.example/o.gif"' in out.html
    assert out.links == ["https://shop.example.jp/sale?x=1"]
    injected = render(
        {"id": "v", "subject": "{{ name }}様", "body": "x"},
        {"name": "a\r\nBcc: evil@example.com"},
        link_hosts=[],
        click_url=str,
        open_url=None,
    )
    assert injected.subject == "a Bcc: evil@example.com様"  # one header line


def test_tokens_verify_and_refuse_tampering_and_reuse_for_another_purpose() -> None:
    signer = TrackingSigner(b"k" * 32)
    mid = uuid.uuid4()
    token = signer.token("c", mid, 3)
    tracked = signer.verify(token, "c")
    assert (tracked.message_id, tracked.link_no) == (mid, 3)
    _body, mac = token.split(".")
    forged = signer.token("c", mid, 4).split(".")[0] + "." + mac  # another link, old MAC
    for bad in (forged, token[:-2] + "AA", "x.y", token + "."):
        with pytest.raises(InvalidToken):
            signer.verify(bad, "c")
    with pytest.raises(InvalidToken):
        signer.verify(signer.token("o", mid), "u")  # an open token is no unsubscribe
    with pytest.raises(InvalidToken):
        TrackingSigner(b"j" * 32).verify(token, "c")
    assert str(mid) not in token and mid.hex not in token


@pytest.mark.parametrize(
    ("kwargs", "allowed", "reason"),
    [
        ({"opted_out": True}, False, "opted_out"),
        ({"view": ("active", {"email": False})}, False, "no_consent"),
        ({"view": ("erased", {})}, False, "customer_inactive"),
        ({"identity_status": None}, False, "unknown_customer"),
        ({"identity_status": "merged"}, False, "customer_inactive"),
        ({"identity_consent": None}, False, "no_consent"),
        ({"identity_consent": False, "view": ("active", {"email": True})}, False, "no_consent"),
        ({"address": None}, False, "no_address"),
        ({}, True, None),
        ({"view": None}, True, None),
    ],
)
def test_consent_decisions(kwargs: dict[str, object], allowed: bool, reason: str | None) -> None:
    base: dict[str, object] = {
        "opted_out": False,
        "view": ("active", {"email": True}),
        "identity_status": "active",
        "identity_consent": True,
        "address": "a@example.jp",
    }
    verdict = decide("email", **{**base, **kwargs})  # type: ignore[arg-type]
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


def test_the_message_topic_names_only_the_relay_that_publishes_it() -> None:
    from crm_contracts.topics import ENGAGEMENT_MESSAGE
    from engagement.campaign_translator import PRODUCER

    # the dispatcher records in the store; the campaign outbox relay is the one producer
    assert ENGAGEMENT_MESSAGE.producers == (PRODUCER,)


def test_a_url_ends_where_japanese_text_starts() -> None:
    out = render(
        {"id": "d", "body": "セールはhttps://shop.example.jp/sale?a=1&b=%E3%81%82をご覧ください。"},
        {},
        link_hosts=["shop.example.jp"],
        click_url=lambda n: f"https://t.example/c/{n}",
        open_url=None,
    )
    assert out.links == ["https://shop.example.jp/sale?a=1&b=%E3%81%82"]
    assert out.body == "セールはhttps://t.example/c/0をご覧ください。"


def test_links_signed_before_a_master_key_rotation_verify_while_the_old_key_is_kept() -> None:
    old, new = b"o" * 32, b"n" * 32
    mid = uuid.uuid4()
    sent_before = TrackingSigner(old).token("u", mid)
    rotated = TrackingSigner(new, [old])
    assert rotated.verify(sent_before, "u").message_id == mid
    assert rotated.token("u", mid) != sent_before  # signed with the current key now
    assert TrackingSigner(new).verify(rotated.token("u", mid), "u").message_id == mid
    with pytest.raises(InvalidToken):  # the old master key removed: the old links stop
        TrackingSigner(new).verify(sent_before, "u")


def test_more_than_a_thousand_trackable_links_are_refused_by_variant_field() -> None:
    many = "{% for i in range(1001) %}https://shop.example.jp/p{{ i }} {% endfor %}"
    variants = [{"id": "ok", "body": "https://shop.example.jp/"}, {"id": "big", "body": many}]
    assert check_templates(variants, ["shop.example.jp"]) == [
        ("variants.1.body", "more than 1000 trackable links in variant 'big'")
    ]
    # links on other hosts are not tracked, so not counted
    assert check_templates(variants, ["other.example.jp"]) == []
    # 600 in the text and 600 others in the HTML: 1,200 in the message
    text = "{% for i in range(600) %}https://shop.example.jp/t{{ i }} {% endfor %}"
    html = '{% for i in range(600) %}<a href="https://shop.example.jp/h{{ i }}">x</a>{% endfor %}'
    assert [
        p for p, _ in check_templates([{"id": "x", "body": text, "html": html}], ["shop.example.jp"])
    ] == ["variants.0.html"]
    with pytest.raises(TemplateError):  # and a render past the limit fails rather than numbering 1000+
        render(
            {"id": "big", "body": many},
            {},
            link_hosts=["shop.example.jp"],
            click_url=str,
            open_url=None,
        )


def test_rule_values_are_checked_per_condition() -> None:
    from crm_contracts.events.identity import Gender
    from engagement.domain.campaign import GENDERS

    assert set(GENDERS) == {g.value for g in Gender}
    variants = [{"id": "d", "body": "x"}]
    rules = [
        {"variant": "d", "when": {"birthday_month": ["current", "0", "12"], "gender": ["male", "man"]}},
        {"variant": "d", "when": {"segment": ["loyal", "vip"], "rank": ["gold", "none", "diamond"]}},
    ]
    problems = dict(validate_plan(["sms"], variants, rules, "d", 0, ranks=["regular", "gold"]))
    assert set(problems) == {
        "rules.0.when.birthday_month",
        "rules.0.when.gender",
        "rules.1.when.segment",
        "rules.1.when.rank",
    }
    assert "'0'" in problems["rules.0.when.birthday_month"]
    assert "'diamond'" in problems["rules.1.when.rank"]
    assert validate_plan(["sms"], variants, rules[1:], "d", 0)  # segment still checked without ranks


def test_published_reasons_carry_no_address() -> None:
    """A bounce recorded with text (before the API refused it) and a failure whose
    reason quoted a server's text are published without the address."""
    from crm_platform.relay import StoredFact
    from engagement.campaign_translator import CampaignTranslator

    at = datetime(2026, 11, 23, tzinfo=UTC)

    message = Message.prepare(uuid.uuid4(), uuid.uuid4(), "email", "d", [], at)
    message.mark_sent(at, 1)
    message.bounce("hard", "5.1.1", at)
    old = Message.prepare(uuid.uuid4(), uuid.uuid4(), "email", "d", [], at)
    old.mark_sent(at, 1)
    old.bounce("hard", "550 5.1.1 <taro@example.jp>: user unknown", at)
    failed = Message.prepare(uuid.uuid4(), uuid.uuid4(), "email", "d", [], at)
    failed.mark_failed(at, "SMTP 550: <hanako.sato@example.co.jp> unknown", 1, True)
    messages = {m.id: m for m in (message, old, failed)}
    translate = CampaignTranslator(lambda _: None, messages.__getitem__)  # type: ignore[arg-type,return-value]

    def published(m: Message) -> dict[str, object]:
        (event,) = translate(StoredFact(m.collect_events()[-1], 1, None, "test"))
        return event.payload.model_dump()

    assert published(message)["reason"] == "5.1.1"
    assert published(old)["reason"] == ""
    reason = published(failed)["reason"]
    assert reason == "SMTP 550: <<address>> unknown"
    assert "@" not in str(reason)
