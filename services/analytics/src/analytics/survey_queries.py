"""Survey results and form counts, from the facts of migration 0007 (read with FINAL, so
a re-delivered record never counts twice), attributed to the current customer through
``identity_lookup`` like every other figure.

Definitions (docs/surveys.md says the same):

* A period is ``[start, end)`` in days (Asia/Tokyo) of the answer (the submission).
* **Responses**: distinct responses answered in the period; **respondents**: distinct
  current customers among them (anonymous responses are responses, never customers).
* **Response rate**: responses through an invitation in the period / invitations sent
  before the period's end.
* **NPS** per NPS question: % promoters (9–10) − % detractors (0–6), −100…100.
* **CSAT** per CSAT question: the average (1–5), the share satisfied (4–5) and the
  distribution.
* **Choices**: how often each option was chosen (a multiple-choice answer counts each
  option it chose), and the share of that question's answers choosing it.
* Breakdowns (``by``): ``channel`` (invitation / link), ``version`` (the survey version
  answered) or ``rank`` (the respondent's membership rank now; ``non_member`` without
  one, ``anonymous`` for public-link answers).
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any, Literal

from analytics.queries import Queries

Breakdown = Literal["none", "channel", "version", "rank"]
BREAKDOWNS: tuple[str, ...] = ("none", "channel", "version", "rank")

_OWNER = "joinGetOrNull('identity_lookup', 'customer_id', key_hash)"
#: the current customer of a row's key as text (the key itself when nobody owns it)
_CUSTOMER = f"if(isNull({_OWNER}) OR empty({_OWNER}), person_key, toString({_OWNER}))"

#: Each member key's rank now, attributed to its current customer.
_RANKS = f"""
ranks AS (
    SELECT {_CUSTOMER} AS customer, argMax(rank, occurred_at) AS rank
    FROM (
        SELECT person_key, cityHash64(person_key) AS key_hash, occurred_at,
               if(event_type = 'member.rank_changed', kind, JSONExtractString(payload, 'rank')) AS rank
        FROM events FINAL
        WHERE event_type IN ('member.enrolled', 'member.rank_changed')
    )
    GROUP BY customer
)"""


def nps(promoters: int, detractors: int, answers: int) -> float | None:
    """% promoters − % detractors, −100…100 (None without answers)."""
    return round(100.0 * (promoters - detractors) / answers, 2) if answers else None


class SurveyQueries(Queries):
    """The survey and form queries, on the same client and budget as the KPI queries."""

    def survey_results(
        self, survey_id: uuid.UUID, start: date, end: date, by: Breakdown = "none"
    ) -> dict[str, Any]:
        params = {"survey": survey_id, "start": start, "end": end}
        answers_cte = f"""
        answers AS (
            SELECT *, {_CUSTOMER} AS customer
            FROM survey_answers FINAL
            WHERE survey_id = {{survey:UUID}} AND day >= {{start:Date}} AND day < {{end:Date}}
        )"""
        if by == "rank":
            # A member key's rank now; '' (or NULL, with join_use_nulls) when not a member.
            group = "if(anonymous = 1, 'anonymous', if(empty(ifNull(rank, '')), 'non_member', rank))"
            grouped = (
                f"WITH {answers_cte}, {_RANKS} SELECT *, {group} AS grp FROM ("
                "SELECT a.*, r.rank AS rank FROM answers AS a LEFT JOIN ranks AS r ON r.customer = a.customer)"
            )
        else:
            group = {"none": "'all'", "channel": "channel", "version": "toString(survey_version)"}[by]
            grouped = f"WITH {answers_cte} SELECT *, {group} AS grp FROM answers"
        invitations = self._rows(
            "SELECT uniqExact(invitation_id) AS n FROM survey_invitations FINAL"
            " WHERE survey_id = {survey:UUID} AND day < {end:Date}",
            **params,
        )[0]["n"]
        totals = self._rows(
            f"""
            SELECT grp, uniqExact(response_id) AS responses,
                   uniqExactIf(response_id, invited = 1) AS invited_responses,
                   uniqExactIf(response_id, anonymous = 1) AS anonymous_responses,
                   uniqExactIf(customer, anonymous = 0) AS respondents
            FROM ({grouped}) GROUP BY grp ORDER BY grp
            """,
            **params,
        )
        questions = self._rows(
            f"""
            SELECT grp, question_id, kind, count() AS answers,
                   countIf(score >= 9) AS promoters, countIf(score <= 6) AS detractors,
                   sum(score) AS score_sum,
                   countIf(score = 1) AS s1, countIf(score = 2) AS s2, countIf(score = 3) AS s3,
                   countIf(score = 4) AS s4, countIf(score = 5) AS s5,
                   avg(text_length) AS avg_text_length
            FROM ({grouped}) GROUP BY grp, question_id, kind ORDER BY grp, question_id
            """,
            **params,
        )
        choices = self._rows(
            f"""
            SELECT grp, question_id, choice, count() AS n
            FROM ({grouped}) ARRAY JOIN choices AS choice
            GROUP BY grp, question_id, choice ORDER BY grp, question_id, n DESC, choice
            """,
            **params,
        )
        groups: dict[str, dict[str, Any]] = {}
        for row in totals:
            responses = int(row["responses"])
            groups[row["grp"]] = {
                "group": row["grp"],
                "responses": responses,
                "invited_responses": int(row["invited_responses"]),
                "anonymous_responses": int(row["anonymous_responses"]),
                "respondents": int(row["respondents"]),
                "questions": {},
            }
        for row in questions:
            n = int(row["answers"])
            entry: dict[str, Any] = {"kind": row["kind"], "answers": n}
            if row["kind"] == "nps":
                entry.update(
                    promoters=int(row["promoters"]),
                    passives=n - int(row["promoters"]) - int(row["detractors"]),
                    detractors=int(row["detractors"]),
                    nps=nps(int(row["promoters"]), int(row["detractors"]), n),
                )
            elif row["kind"] == "csat":
                distribution = {str(k): int(row[f"s{k}"]) for k in range(1, 6)}
                entry.update(
                    average=round(int(row["score_sum"]) / n, 4) if n else None,
                    satisfied_share=round((distribution["4"] + distribution["5"]) / n, 4) if n else None,
                    distribution=distribution,
                )
            elif row["kind"] == "free_text":
                entry["avg_length"] = round(float(row["avg_text_length"]), 1) if n else None
            else:
                entry["choices"] = {}
            groups[row["grp"]]["questions"][row["question_id"]] = entry
        for row in choices:
            entry = groups[row["grp"]]["questions"][row["question_id"]]
            entry.setdefault("choices", {})[row["choice"]] = {
                "count": int(row["n"]),
                "share": round(int(row["n"]) / entry["answers"], 4) if entry["answers"] else None,
            }
        overall = self._overall(groups)
        return {
            "survey_id": str(survey_id),
            "start": start.isoformat(),
            "end": end.isoformat(),
            "by": by,
            "invitations": int(invitations),
            **overall,
            "response_rate": round(overall["invited_responses"] / invitations, 4) if invitations else None,
            "groups": list(groups.values()) if by != "none" else [],
            "questions": groups["all"]["questions"] if by == "none" and "all" in groups else {},
        }

    @staticmethod
    def _overall(groups: dict[str, dict[str, Any]]) -> dict[str, int]:
        # Groups split responses (a response has one channel, version and respondent),
        # so their sums are the totals.
        keys = ("responses", "invited_responses", "anonymous_responses", "respondents")
        return {k: sum(g[k] for g in groups.values()) for k in keys}

    def form_results(self, start: date, end: date, form_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
        """Per form: submissions in the period (new customers — sign-ups — and existing
        ones), distinct customers, consent opt-ins per channel; for event forms the
        registrations now (confirmed / waitlisted / cancelled) against capacity."""
        params: dict[str, Any] = {"start": start, "end": end, "form": form_id or uuid.UUID(int=0)}
        only = "({form:UUID} = toUUID('00000000-0000-0000-0000-000000000000') OR form_id = {form:UUID})"
        submissions = self._rows(
            f"""
            SELECT form_id, any(form_kind) AS form_kind, uniqExact(submission_id) AS submissions,
                   uniqExactIf(submission_id, outcome = 'created') AS new_customers,
                   uniqExact({_CUSTOMER}) AS customers,
                   countIf(consent_email = 1) AS email_yes, countIf(isNotNull(consent_email)) AS email_asked,
                   countIf(consent_sms = 1) AS sms_yes, countIf(isNotNull(consent_sms)) AS sms_asked,
                   countIf(consent_line = 1) AS line_yes, countIf(isNotNull(consent_line)) AS line_asked,
                   countIf(consent_app_push = 1) AS app_push_yes,
                   countIf(isNotNull(consent_app_push)) AS app_push_asked,
                   countIf(consent_postal = 1) AS postal_yes, countIf(isNotNull(consent_postal)) AS postal_asked,
                   groupUniqArray(consent_wording_version) AS wording_versions
            FROM form_submissions FINAL
            WHERE day >= {{start:Date}} AND day < {{end:Date}} AND {only}
            GROUP BY form_id ORDER BY form_id
            """,
            **params,
        )
        registrations = {
            r["form_id"]: r
            for r in self._rows(
                f"""
                SELECT form_id, max(capacity) AS capacity,
                       countIf(status = 'confirmed') AS confirmed,
                       countIf(status = 'waitlisted') AS waitlisted,
                       countIf(status = 'cancelled') AS cancelled
                FROM (
                    SELECT form_id, submission_id, argMax(status, (occurred_at, reason != 'registered')) AS status,
                           max(capacity) AS capacity
                    FROM form_registrations FINAL
                    WHERE day < {{end:Date}} AND {only}
                    GROUP BY form_id, submission_id
                )
                GROUP BY form_id
                """,
                **params,
            )
        }
        out = []
        for row in submissions:
            consent = {
                channel: {
                    "asked": int(row[f"{channel}_asked"]),
                    "granted": int(row[f"{channel}_yes"]),
                    "opt_in_rate": round(int(row[f"{channel}_yes"]) / int(row[f"{channel}_asked"]), 4),
                }
                for channel in ("email", "sms", "line", "app_push", "postal")
                if int(row[f"{channel}_asked"])
            }
            item: dict[str, Any] = {
                "form_id": str(row["form_id"]),
                "form_kind": row["form_kind"],
                "submissions": int(row["submissions"]),
                "new_customers": int(row["new_customers"]),
                "existing_customers": int(row["submissions"]) - int(row["new_customers"]),
                "customers": int(row["customers"]),
                "consent": consent,
                "wording_versions": sorted(row["wording_versions"]),
                "registrations": None,
            }
            reg = registrations.get(row["form_id"])
            if reg is not None:
                capacity = int(reg["capacity"])
                item["registrations"] = {
                    "capacity": capacity,
                    "confirmed": int(reg["confirmed"]),
                    "waitlisted": int(reg["waitlisted"]),
                    "cancelled": int(reg["cancelled"]),
                    "fill_rate": round(int(reg["confirmed"]) / capacity, 4) if capacity else None,
                }
            out.append(item)
        return out
