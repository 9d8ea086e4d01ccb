"""The demo retailer's surveys and forms, loaded through engagement's public API.

**What it plans** (deterministic from the demo plan and a seed):

* a post-purchase survey (ご購入後アンケート: NPS, CSAT, where they bought, what they
  liked, a comment) sent to the recent buyers — one invitation per person, for their
  latest purchase in the last ``recent_days``. About a third answer (members more
  often, buyers who returned something less); members score higher, a return lowers
  the score;
* a newsletter sign-up form (メールマガジン登録) submitted by a few known people
  (identity links them) and a few new ones (identity creates them), with e-mail/SMS
  consent;
* a store styling seminar (スタイリングセミナー) with 10 places and a waitlist of 5,
  which 14 people register for.

**How it loads**: ``POST /v1/surveys``, ``POST /v1/surveys/{id}/invitations`` with the
buyers' customer ids (from the registrations the main demo made), then each answer to
its invitation's signed link (``POST /v1/public/survey-invitations/{token}/answers``);
``POST /v1/forms`` and ``POST /v1/public/forms/{id}/submissions`` for the forms.
Nothing is written to a store or a topic directly. Load it once per platform, like the
main demo: each load defines a new survey and new forms (their submissions carry client
keys, so a retried request is harmless).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from crm_cli.demo import DemoPlan, Endpoints, LoadReport, Purchase

Progress = Callable[[str, int, int], None]
JST = timedelta(hours=9)

POST_PURCHASE_SURVEY: dict[str, Any] = {
    "title": "ご購入後アンケート",
    "questions": [
        {"id": "recommend", "kind": "nps", "text": "当店を友人や家族に薦める可能性はどのくらいありますか?"},
        {"id": "satisfaction", "kind": "csat", "text": "今回のお買い物の満足度を教えてください"},
        {
            "id": "channel",
            "kind": "single_choice",
            "text": "どちらでお買い物をされましたか?",
            "choices": ["store", "online", "app"],
        },
        {
            "id": "liked",
            "kind": "multiple_choice",
            "text": "良かった点を選んでください(いくつでも)",
            "choices": ["品揃え", "価格", "接客", "配送の速さ", "アプリの使いやすさ"],
            "required": False,
        },
        {
            "id": "comment",
            "kind": "free_text",
            "text": "ご意見・ご要望",
            "required": False,
            "max_length": 400,
        },
    ],
    "allow_anonymous": False,
}
SIGNUP_FORM: dict[str, Any] = {
    "kind": "signup",
    "title": "メールマガジン登録",
    "fields": [
        {"id": "email", "kind": "email", "label": "メールアドレス", "required": True},
        {"id": "name_kanji", "kind": "name_kanji", "label": "お名前", "required": True},
        {"id": "name_kana", "kind": "name_kana", "label": "フリガナ"},
        {"id": "prefecture", "kind": "prefecture", "label": "都道府県"},
        {
            "id": "interests",
            "kind": "multi_choice",
            "label": "興味のあるカテゴリ",
            "choices": ["tops", "bags", "shoes", "cosmetics"],
        },
    ],
    "consent": {
        "purpose": "marketing",
        "wording": "新商品・セール・会員特典のお知らせをメールおよびSMSで受け取ります。",
        "wording_version": "2026-10",
        "channels": ["email", "sms"],
    },
}
SEMINAR_CAPACITY, SEMINAR_WAITLIST, SEMINAR_REGISTRATIONS = 10, 5, 14
COMMENTS = (
    "スタッフの方の説明が丁寧でした",
    "サイズ展開がもっとあると嬉しいです",
    "アプリのクーポンが使いやすかった",
    "配送が思ったより早かったです",
    "返品の手続きが分かりにくかった",
    "店内が混んでいてレジに時間がかかりました",
)
#: NPS score weights 0..10: members score higher, a return lowers the score.
NPS_WEIGHTS = {
    "member": (1, 1, 1, 1, 2, 3, 4, 9, 16, 26, 36),
    "guest": (2, 2, 2, 3, 4, 6, 8, 16, 20, 19, 18),
    "returned": (8, 7, 8, 9, 9, 10, 11, 12, 10, 9, 7),
}
RESPONSE_RATE = {"member": 0.42, "guest": 0.28, "returned": 0.22}


@dataclass
class SurveyPlan:
    survey: dict[str, Any]
    #: person_id -> (segment: member | guest | returned, the purchase asked about)
    invitees: dict[int, tuple[str, Purchase]]
    #: person_id -> the answers they give (only those who answer)
    answers: dict[int, dict[str, Any]]
    signup_form: dict[str, Any]
    signups: list[dict[str, Any]]
    seminar_form: dict[str, Any]
    registrations: list[dict[str, Any]]


@dataclass
class SurveyLoadReport:
    survey_id: str = ""
    invited: int = 0
    answered: int = 0
    signup_form_id: str = ""
    signups: int = 0
    seminar_form_id: str = ""
    confirmed: int = 0
    waitlisted: int = 0
    failures: list[str] = field(default_factory=list)


def _csat(score: int, rng: random.Random) -> int:
    base = 1 if score <= 3 else 2 if score <= 5 else 3 if score <= 6 else 4 if score <= 8 else 5
    return max(1, min(5, base + rng.choice((-1, 0, 0, 0, 1))))


def plan_surveys(
    plan_: DemoPlan,
    seed: int = 7,
    today: date | None = None,
    recent_days: int = 60,
    max_invitations: int = 600,
) -> SurveyPlan:
    """Everything the surveys-and-forms demo will send, decided up front (deterministic)."""
    rng = random.Random(seed * 7919 + 17)
    today = today or (datetime.now(UTC) + JST).date()
    since = (today - timedelta(days=recent_days)).isoformat()
    people = {p.person_id: p for p in plan_.people}
    latest: dict[int, Purchase] = {}
    for purchase in plan_.purchases:
        if purchase.day >= since and purchase.day <= today.isoformat():
            held = latest.get(purchase.person_id)
            if held is None or purchase.day >= held.day:
                latest[purchase.person_id] = purchase
    chosen = sorted(latest)[:max_invitations]
    invitees: dict[int, tuple[str, Purchase]] = {}
    answers: dict[int, dict[str, Any]] = {}
    for person_id in chosen:
        purchase = latest[person_id]
        segment = "returned" if purchase.returned else "member" if people[person_id].member_no else "guest"
        invitees[person_id] = (segment, purchase)
        if rng.random() >= RESPONSE_RATE[segment]:
            continue
        score = rng.choices(range(11), weights=NPS_WEIGHTS[segment])[0]
        liked = [c for c in POST_PURCHASE_SURVEY["questions"][3]["choices"] if rng.random() < 0.3]
        answer: dict[str, Any] = {
            "recommend": score,
            "satisfaction": _csat(score, rng),
            "channel": purchase.channel if purchase.channel in ("store", "online", "app") else "online",
        }
        if liked:
            answer["liked"] = liked
        if rng.random() < 0.2:
            answer["comment"] = rng.choice(COMMENTS[4:] if score <= 6 else COMMENTS[:4])
        answers[person_id] = answer

    known = [p for p in plan_.people if p.email][:: max(1, len(plan_.people) // 40)]
    signups = []
    for i, person in enumerate(known[:8]):
        signups.append(
            {
                "submission_id": f"demo-signup-{seed}-{i}",
                "fields": {
                    "email": person.email,
                    "name_kanji": f"{person.family[0]} {person.given[0]}",
                    "name_kana": f"{person.family[1]} {person.given[1]}",
                    "prefecture": person.place[0],
                    "interests": [c for c in ("tops", "bags", "shoes", "cosmetics") if rng.random() < 0.4],
                },
                "consent": {"email": rng.random() < 0.8, "sms": rng.random() < 0.3},
            }
        )
    for i in range(4):  # people the retailer did not know yet
        signups.append(
            {
                "submission_id": f"demo-signup-{seed}-new-{i}",
                "fields": {
                    "email": f"new.member{i}.{seed}@example.jp",
                    "name_kanji": ("高橋 美咲", "伊藤 翔", "渡辺 結衣", "中村 蓮")[i],
                    "name_kana": ("タカハシ ミサキ", "イトウ ショウ", "ワタナベ ユイ", "ナカムラ レン")[i],
                },
                "consent": {"email": True, "sms": i % 2 == 0},
            }
        )
    starts = datetime(today.year, today.month, today.day, 14, tzinfo=UTC) - JST + timedelta(days=14)
    seminar = {
        "kind": "event_registration",
        "title": "秋冬スタイリングセミナー(渋谷店)",
        "fields": [
            {"id": "email", "kind": "email", "label": "メールアドレス", "required": True},
            {"id": "name_kanji", "kind": "name_kanji", "label": "お名前", "required": True},
            {"id": "companions", "kind": "number", "label": "同伴者数", "minimum": 0, "maximum": 2},
        ],
        "consent": {
            "purpose": "event_updates",
            "wording": "本セミナーに関するご案内をメールでお送りします。",
            "wording_version": "2026-11",
            "channels": ["email"],
        },
        "capacity": SEMINAR_CAPACITY,
        "waitlist": SEMINAR_WAITLIST,
        "event_starts_at": starts.isoformat(),
    }
    attendees = [p for p in plan_.people if p.email and p.member_no][:SEMINAR_REGISTRATIONS]
    registrations = [
        {
            "submission_id": f"demo-seminar-{seed}-{i}",
            "fields": {
                "email": p.email,
                "name_kanji": f"{p.family[0]} {p.given[0]}",
                "companions": rng.choice((0, 0, 1, 2)),
            },
            "consent": {"email": True},
        }
        for i, p in enumerate(attendees)
    ]
    return SurveyPlan(POST_PURCHASE_SURVEY, invitees, answers, SIGNUP_FORM, signups, seminar, registrations)


def customer_ids(plan_: DemoPlan, report: LoadReport) -> dict[int, str]:
    """person_id -> a customer id identity gave one of their registrations (the main
    demo registers the early records, then the late ones, and lists the ids in order)."""
    early = [r for i, r in enumerate(plan_.registrations) if i not in plan_.late]
    late = [r for i, r in enumerate(plan_.registrations) if i in plan_.late]
    out: dict[int, str] = {}
    for record, cid in zip(early + late, report.customer_ids, strict=False):
        if cid and record.person_id not in out:
            out[record.person_id] = cid
    return out


async def load_surveys(
    plan_: DemoPlan,
    report: LoadReport,
    endpoints: Endpoints,
    progress: Progress,
    *,
    seed: int = 7,
    today: date | None = None,
    concurrency: int = 8,
) -> SurveyLoadReport:
    """Send the surveys-and-forms plan through engagement's API (after :func:`load` of
    the main demo, whose ``LoadReport.customer_ids`` name the buyers)."""
    splan = plan_surveys(plan_, seed, today)
    ids = customer_ids(plan_, report)
    out = SurveyLoadReport()
    staff = {"X-API-Key": endpoints.admin_key}
    async with httpx.AsyncClient(base_url=endpoints.engagement, timeout=60) as http:
        created = await http.post("/v1/surveys", json=splan.survey, headers=staff)
        created.raise_for_status()
        out.survey_id = created.json()["survey_id"]
        people = [p for p in splan.invitees if p in ids]
        tokens: dict[int, str] = {}
        for start in range(0, len(people), 1000):
            chunk = people[start : start + 1000]
            invited = await http.post(
                f"/v1/surveys/{out.survey_id}/invitations",
                json={"customer_ids": [ids[p] for p in chunk]},
                headers=staff,
            )
            invited.raise_for_status()
            by_customer = {i["customer_id"]: i["survey_url"] for i in invited.json()["invitations"]}
            for person in chunk:
                tokens[person] = by_customer[ids[person]].rsplit("/", 1)[1]
            out.invited += len(chunk)
            progress("survey invitations", out.invited, len(people))

        answering = [p for p in people if p in splan.answers]
        done = 0

        async def answer(person: int) -> None:
            nonlocal done
            response = await http.post(
                f"/v1/public/survey-invitations/{tokens[person]}/answers",
                json={"answers": splan.answers[person]},
            )
            if response.status_code in (200, 201):
                out.answered += 1
            else:
                out.failures.append(f"answer {response.status_code}: {response.text[:200]}")
            done += 1
            progress("survey answers", done, len(answering))

        await _limited(answering, answer, concurrency)

        out.signup_form_id, signed = await _form(http, staff, splan.signup_form, splan.signups, out)
        out.signups = len(signed)
        out.seminar_form_id, registered = await _form(
            http, staff, splan.seminar_form, splan.registrations, out
        )
        out.confirmed = sum(r.get("registration") == "confirmed" for r in registered)
        out.waitlisted = sum(r.get("registration") == "waitlisted" for r in registered)
        progress("forms", out.signups + len(registered), len(splan.signups) + len(splan.registrations))
    return out


async def _form(
    http: httpx.AsyncClient,
    staff: dict[str, str],
    definition: dict[str, Any],
    submissions: list[dict[str, Any]],
    out: SurveyLoadReport,
) -> tuple[str, list[dict[str, Any]]]:
    created = await http.post("/v1/forms", json=definition, headers=staff)
    created.raise_for_status()
    form_id = str(created.json()["form_id"])
    results = []
    for body in submissions:  # in order: the seminar's places go first come, first served
        for attempt in range(3):
            response = await http.post(f"/v1/public/forms/{form_id}/submissions", json=body)
            if response.status_code in (200, 201):
                results.append(response.json())
                break
            if response.status_code in (429, 503) and attempt < 2:
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            out.failures.append(f"form {response.status_code}: {response.text[:200]}")
            break
    return form_id, results


async def _limited(items: Sequence[Any], work: Callable[[Any], Any], concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> None:
        async with semaphore:
            await work(item)

    await asyncio.gather(*(one(i) for i in items))
