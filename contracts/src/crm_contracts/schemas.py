"""JSON Schema documents for every published event, kept in ``contracts/schemas/``.

``python -m crm_contracts.schemas --write`` regenerates them; ``--check`` (and the test
suite) fails when the committed files drift from the models, and runs the compatibility
check so a breaking change inside a schema version cannot slip in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crm_contracts.compat import breaking_changes
from crm_contracts.registry import registry

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def schema_filename(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}.json"


def generate() -> dict[str, dict[str, Any]]:
    """``{filename: schema}`` for every registered event class."""
    out: dict[str, dict[str, Any]] = {}
    for cls in registry.classes():
        event_type, version = cls.type_key()
        schema = cls.model_json_schema(mode="serialization")
        schema["$id"] = f"urn:crm:event:{event_type}:v{version}"
        schema["x-topic"] = cls.TOPIC
        out[schema_filename(event_type, version)] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def check(directory: Path = SCHEMA_DIR) -> list[str]:
    """Problems between the committed schema files and the models (empty when in sync)."""
    problems: list[str] = []
    generated = generate()
    for name, schema in generated.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing; run python -m crm_contracts.schemas --write")
            continue
        committed = json.loads(path.read_text(encoding="utf-8"))
        for change in breaking_changes(committed, schema):
            problems.append(f"{name}: breaking change within a schema version: {change}")
        if render(committed) != render(schema):
            problems.append(f"{name}: out of date; run python -m crm_contracts.schemas --write")
    for path in sorted(directory.glob("*.json")):
        if path.name not in generated:
            problems.append(f"{path.name}: no model produces it (a version may not be removed)")
    return problems


class BreakingChangeError(Exception):
    """A model changed incompatibly without a new schema version."""


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write the schema files; refuse to overwrite one with a breaking change."""
    directory.mkdir(parents=True, exist_ok=True)
    generated = generate()
    for name, schema in generated.items():
        path = directory / name
        if path.exists():
            changes = breaking_changes(json.loads(path.read_text(encoding="utf-8")), schema)
            if changes:
                raise BreakingChangeError(
                    f"{name}: {'; '.join(changes)} (add a new schema_version with an upcaster)"
                )
    written = []
    for name, schema in generated.items():
        path = directory / name
        text = render(schema)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path}")
        return 0
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
