"""Double opt-in without I/O: the confirmation's rules, its signed token, and the
trusted-proxy setting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from engagement.domain.form import (
    MAX_CODE_ATTEMPTS,
    ConfirmationError,
    ConfirmationExpired,
    ConfirmationLocked,
    ConfirmationUsed,
    ConsentConfirmation,
    ConsentRequest,
    Form,
    FormField,
    FormSubmission,
    confirmation_id,
)
from engagement.surveys import ConfirmationSigner, InvalidToken, InvitationSigner, SurveySettings

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
KEY = b"k" * 32
EMAIL = ["email", "a" * 64]


def _submission() -> FormSubmission:
    consent = ConsentRequest("marketing", "News by e-mail", "v3", ("email", "sms"))
    form = Form.define(
        uuid.uuid4(), "signup", "Sign up", [FormField("email", "email", "E-mail", True)], consent, T0
    )
    return FormSubmission.record(
        form, "web-1", str(uuid.uuid4()), "created", [EMAIL], {"email": True}, {}, None, T0
    )


def test_a_confirmation_works_once_and_only_before_it_expires() -> None:
    submission = _submission()
    c = ConsentConfirmation.request(submission, "email", EMAIL, T0, T0 + timedelta(hours=1))
    assert c.id == confirmation_id(submission.id, "email")  # a retried submission finds it
    assert (c.purpose, c.wording_version, c.identifier) == ("marketing", "v3", EMAIL)
    c.check_usable(T0 + timedelta(minutes=59))
    with pytest.raises(ConfirmationExpired):
        c.check_usable(T0 + timedelta(hours=1))
    c.confirm(T0 + timedelta(minutes=5), granted=True)
    assert (c.confirmed_at, c.granted) == (T0 + timedelta(minutes=5), True)
    with pytest.raises(ConfirmationUsed):
        c.confirm(T0 + timedelta(minutes=6), granted=True)


def test_only_an_address_that_receives_the_proof_is_confirmable() -> None:
    for channel, identifier in (
        ("line", ["line_id", "c" * 64]),
        ("sms", EMAIL),
        ("email", ["phone", "b" * 64]),
    ):
        with pytest.raises(ConfirmationError):
            ConsentConfirmation.request(_submission(), channel, identifier, T0, T0 + timedelta(hours=1))


def test_five_wrong_codes_lock_an_sms_confirmation() -> None:
    c = ConsentConfirmation.request(_submission(), "sms", ["phone", "b" * 64], T0, T0 + timedelta(hours=1))
    for _ in range(MAX_CODE_ATTEMPTS):
        c.refuse_code(T0)
    with pytest.raises(ConfirmationLocked):
        c.check_usable(T0)
    with pytest.raises(ConfirmationLocked):
        c.confirm(T0, granted=True)


def test_confirmation_tokens_are_signed_and_carry_no_personal_data() -> None:
    signer = ConfirmationSigner(KEY)
    cid = uuid.uuid4()
    token = signer.sign(cid)
    assert token.startswith("c1." + cid.hex + ".") and "@" not in token
    assert signer.verify(token) == cid
    code = signer.code(cid)
    assert len(code) == 6 and code.isdigit() and code == signer.code(cid) and code not in token
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (
        altered,
        "c1." + uuid.uuid4().hex + "." + token.split(".")[2],
        "c1.x.y",
        "v1." + token[3:],
        "",
    ):
        with pytest.raises(InvalidToken):
            signer.verify(bad)
    with pytest.raises(InvalidToken):
        ConfirmationSigner(b"o" * 32).verify(token)  # another key
    # an invitation token under the same key is not a confirmation token
    with pytest.raises(InvalidToken):
        signer.verify("c1." + InvitationSigner(KEY).sign(cid).split(".", 1)[1])


def test_trusted_proxies_are_ips_or_cidrs_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SurveySettings().trusted_proxies == []
    monkeypatch.setenv("CRM_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
    assert SurveySettings().trusted_proxies == ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
    monkeypatch.setenv("CRM_TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip")
    with pytest.raises(ValidationError, match="not-an-ip"):
        SurveySettings()
