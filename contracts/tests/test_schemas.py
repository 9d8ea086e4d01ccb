"""The committed JSON Schemas match the models, and the compatibility rules hold."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from crm_contracts import schemas
from crm_contracts.compat import breaking_changes
from crm_contracts.envelope import ContractModel, Event


def test_committed_schemas_match_the_models() -> None:
    assert schemas.check() == []


def test_drift_is_detected(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    target = tmp_path / "ticket.opened.v1.json"
    doc = json.loads(target.read_text())
    doc["properties"]["payload"]["description"] = "edited by hand"
    target.write_text(json.dumps(doc))
    (tmp_path / "ghost.v1.json").write_text("{}")
    problems = schemas.check(tmp_path)
    assert any("ticket.opened.v1.json: out of date" in p for p in problems)
    assert any("ghost.v1.json" in p for p in problems)


class _PayloadV1(ContractModel):
    sku: str
    quantity: int = Field(ge=1)


class _EventV1(Event):
    TOPIC = "test"
    event_type: Literal["test.happened"] = "test.happened"
    schema_version: Literal[1] = 1
    payload: _PayloadV1


def _schema_with(payload_cls: type[ContractModel]) -> dict:
    class _Evt(Event):
        TOPIC = "test"
        event_type: Literal["test.happened"] = "test.happened"
        schema_version: Literal[1] = 1
        payload: payload_cls  # type: ignore[valid-type]

    return _Evt.model_json_schema(mode="serialization")


BASE = _EventV1.model_json_schema(mode="serialization")


def test_additive_change_is_compatible() -> None:
    class Additive(ContractModel):
        sku: str = Field(description="now documented")
        quantity: int = Field(ge=1)
        note: str | None = None

    assert breaking_changes(BASE, _schema_with(Additive)) == []


@pytest.mark.parametrize(
    ("name", "payload_fields", "expected"),
    [
        ("removed", {"sku": (str, ...)}, "quantity: removed"),
        ("retyped", {"sku": (int, ...), "quantity": (int, Field(ge=1))}, "sku: type changed"),
        (
            "new required",
            {"sku": (str, ...), "quantity": (int, Field(ge=1)), "store": (str, ...)},
            "store: new required",
        ),
        ("tightened", {"sku": (str, ...), "quantity": (int, Field(ge=2))}, "quantity: minimum changed"),
    ],
)
def test_breaking_changes_are_detected(name: str, payload_fields: dict, expected: str) -> None:
    from pydantic import create_model

    changed = create_model(f"P_{name.replace(' ', '_')}", __base__=ContractModel, **payload_fields)
    problems = breaking_changes(BASE, _schema_with(changed))
    assert any(expected in p for p in problems), problems


def test_enum_values_may_be_added_but_not_removed() -> None:
    old = {"properties": {"k": {"type": "string", "enum": ["a", "b"]}}}
    grown = copy.deepcopy(old)
    grown["properties"]["k"]["enum"].append("c")
    shrunk = {"properties": {"k": {"type": "string", "enum": ["a"]}}}
    assert breaking_changes(old, grown) == []
    assert breaking_changes(old, shrunk) == ["$.k: enum values removed: ['b']"]


def test_write_refuses_a_breaking_change(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    target = tmp_path / "ticket.resolved.v1.json"
    doc = json.loads(target.read_text())
    # Pretend the committed schema had a field the model no longer has.
    doc["$defs"]["TicketResolvedPayload"]["properties"]["legacy"] = {"type": "string"}
    target.write_text(json.dumps(doc))
    with pytest.raises(schemas.BreakingChangeError, match="legacy: removed"):
        schemas.write(tmp_path)
