"""docker-compose.yml loads (no key defined twice) and takes every secret from the
environment, refusing to start without it (``${VAR:?message}``); ``.env.example``
documents each of them without a value.

Parsed with PyYAML and a loader that refuses duplicate keys, as compose's own loader
does (``mapping key "X" already defined``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
#: a variable or a setting holding a secret, by its name
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|_KEYS?$")
#: secrets only some deployments have (an SMTP relay's login): empty unless given
OPTIONAL = {"CRM_SMTP_PASSWORD"}
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` (and the forms without ':')
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (a ``<<`` merge may
    still be overridden, as in compose)."""


def _unique_mapping(loader: UniqueKeyLoader, node: MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise ConstructorError(None, None, f'mapping key "{key}" already defined', key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass


def test_the_loader_refuses_a_key_given_twice_but_allows_overriding_a_merge() -> None:
    with pytest.raises(ConstructorError, match='mapping key "A" already defined'):
        load("x:\n  A: 1\n  B: 2\n  A: 3\n")
    assert load("base: &b {A: 1}\nx:\n  <<: *b\n  A: 2\n")["x"] == {"A": 2}


def test_compose_file_has_no_key_defined_twice() -> None:
    compose = load(COMPOSE.read_text())
    assert (
        compose["services"]["engagement-api"]["environment"]["CRM_IDENTITY_URL"] == "http://identity-api:8001"
    )


def _environments() -> list[tuple[str, str, str]]:
    compose = load(COMPOSE.read_text())
    out = []
    for service, spec in compose["services"].items():
        for name, value in (spec.get("environment") or {}).items():
            out.append((service, str(name), str(value)))
    return out


def _secret_references() -> list[tuple[str, str, str]]:
    """Every ``${VAR...}`` of a secret variable anywhere in the file: (name, operator, rest)."""
    refs = INTERPOLATION.findall(COMPOSE.read_text())
    return [(name, op, rest) for name, op, rest in refs if SECRET.search(name)]


def test_every_secret_comes_from_the_environment_and_is_required() -> None:
    refs = _secret_references()
    assert {name for name, _, _ in refs} >= {
        "POSTGRES_PASSWORD",
        "CLICKHOUSE_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "CRM_API_KEYS",
        "CRM_BLIND_INDEX_KEY",
        "CRM_MASTER_KEY",
        "CRM_SURVEY_TOKEN_KEY",
        "CRM_IDENTITY_API_KEY",
        "CRM_ANALYTICS_API_KEY",
        "CRM_MESSAGING_API_KEY",
        "CRM_WEBHOOK_SECRET",
    }
    for name, op, rest in refs:
        if name in OPTIONAL:
            assert (op, rest) == (":-", ""), f"${{{name}}} may only default to empty"
        else:
            assert op == ":?" and rest.strip(), f"${{{name}}} must be ${{{name}:?message}}"


def test_no_secret_setting_has_a_value_written_in_the_file() -> None:
    settings = [e for e in _environments() if SECRET.search(e[1])]
    assert len(settings) > 20  # every service process has its keys
    for service, name, value in settings:
        refs = [ref for ref, _, _ in INTERPOLATION.findall(value)]
        from_env = bool(refs) and all(SECRET.search(r) for r in refs)
        assert from_env, f"{service}: {name} must come from the environment"
        assert INTERPOLATION.sub("", value) == "", f"{service}: {name} has literal text beside the variable"


def test_env_example_documents_every_required_secret_without_a_value() -> None:
    required = {name for name, op, _ in INTERPOLATION.findall(COMPOSE.read_text()) if op == ":?"}
    assigned = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(assigned) == required
    for name, value in assigned.items():
        if name == "CRM_API_KEYS":  # its shape, with placeholders for the key ids and hashes
            entries = json.loads(value.strip("'"))
            assert entries and all(k.startswith("<") and k.endswith(">") for k in entries)
            assert all(e["sha256"] == "<hex>" and e["scopes"] for e in entries.values())
        else:
            assert value == "", f".env.example must not give {name} a value"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_chart_asks_for_every_secret_compose_requires() -> None:
    """The same settings run the chart: each secret compose requires (under its CRM_
    name: the chart takes CRM_POSTGRES_PASSWORD and CRM_CLICKHOUSE_URL whole) is listed
    among the keys its Secret must hold, and the docs and metrics switches are set."""
    values_text = (ROOT / "deploy/helm/crm/values.yaml").read_text()
    required = {name for name, op, _ in INTERPOLATION.findall(COMPOSE.read_text()) if op == ":?"}
    listed = set(re.findall(r"^#   (CRM_[A-Z_]+) ", values_text, re.MULTILINE))
    assert {n for n in required if n.startswith("CRM_")} <= listed
    assert {"CRM_POSTGRES_PASSWORD", "CRM_CLICKHOUSE_URL"} <= listed
    config = load(values_text)["config"]
    assert (config["publicDocs"], config["publicMetrics"]) == (False, False)
    configmap = (ROOT / "deploy/helm/crm/templates/configmap.yaml").read_text()
    assert '"CRM_PUBLIC_DOCS" (.Values.config.publicDocs' in configmap
    assert '"CRM_PUBLIC_METRICS" (.Values.config.publicMetrics' in configmap
