"""The deployment manifests start only processes the image can run.

Every container of ``docker-compose.yml`` and every enabled component of the Helm chart
runs ``python -m <service> <role>``: that role must be a command of the service's CLI,
or the container crash-loops in production while every test here passes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _roles(service: str) -> set[str]:
    try:
        cli = importlib.import_module(f"{service}.__main__").cli
    except ModuleNotFoundError:
        return set()  # a service with no processes yet
    return set(typer.main.get_command(cli).commands)  # type: ignore[attr-defined]


def _compose_processes() -> list[tuple[str, str, str]]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    out = []
    for name, spec in compose["services"].items():
        command = spec.get("command")
        if str(spec.get("image", "")).startswith("crm:") and isinstance(command, list):
            out.append((name, command[0], command[1]))
    return out


def _chart_components(*, enabled_only: bool = True) -> list[tuple[str, dict[str, Any]]]:
    values = yaml.safe_load((ROOT / "deploy/helm/crm/values.yaml").read_text())
    return [(k, v) for k, v in values["components"].items() if v.get("enabled", True) or not enabled_only]


def test_the_manifests_name_processes_at_all() -> None:
    assert len(_compose_processes()) >= 8
    assert len(_chart_components()) >= 8
    disabled = {name for name, _ in _chart_components(enabled_only=False)} - {
        n for n, _ in _chart_components()
    }
    assert disabled == set()


@pytest.mark.parametrize(("name", "service", "role"), _compose_processes())
def test_every_compose_container_runs_a_role_the_service_has(name: str, service: str, role: str) -> None:
    assert role in _roles(service), f"{name}: `python -m {service} {role}` does not exist"


@pytest.mark.parametrize(("name", "component"), _chart_components())
def test_every_enabled_chart_component_runs_a_role_of_its_service(
    name: str, component: dict[str, Any]
) -> None:
    service, role = component["service"], component["role"]
    assert role in _roles(service), f"{name}: `python -m {service} {role}` does not exist"


@pytest.mark.parametrize("service", ["support", "engagement"])
def test_every_eraser_runs_in_compose_and_the_chart(service: str) -> None:
    """An eraser that is not deployed leaves erased customers readable in production."""
    assert "eraser" in _roles(service), f"`python -m {service} eraser` does not exist"
    assert (service, "eraser") in {(s, r) for _, s, r in _compose_processes()}
    assert (service, "eraser") in {(c["service"], c["role"]) for _, c in _chart_components()}
