"""Compatibility check between two JSON Schemas of the same event version.

Within a schema version only *additive* changes are allowed, so that old consumers read
new events and new consumers read old events (replays!). Breaking, per property path:

* a property removed, or an optional property made required;
* a new required property;
* a type, format, const, pattern or bound changed; an enum value removed.

Allowed: new optional properties, new enum values, edits to titles, descriptions and
examples. A breaking change needs a new ``schema_version`` with an upcaster.
"""

from __future__ import annotations

from typing import Any

#: Keywords that describe rather than constrain.
_DESCRIPTIVE = frozenset({"title", "description", "examples", "default", "$comment", "x-topic", "$id"})
_STRUCTURAL = frozenset(
    {"properties", "required", "$ref", "$defs", "items", "prefixItems", "anyOf", "oneOf", "allOf", "enum"}
)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = set()
    while "$ref" in node:
        ref = node["$ref"]
        if ref in seen or not ref.startswith("#/$defs/"):
            break
        seen.add(ref)
        merged = dict(root.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {}))
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        node = merged
    return node


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable breaking changes from ``old`` to ``new`` (empty when compatible)."""
    problems: list[str] = []
    _compare(old, new, old, new, "$", problems)
    return problems


def _compare(
    old: dict[str, Any],
    new: dict[str, Any],
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    path: str,
    problems: list[str],
) -> None:
    old = _resolve(old, old_root)
    new = _resolve(new, new_root)

    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    old_required = set(old.get("required", ()))
    new_required = set(new.get("required", ()))
    for name, old_prop in old_props.items():
        if name not in new_props:
            problems.append(f"{path}.{name}: removed")
            continue
        if name in new_required and name not in old_required:
            problems.append(f"{path}.{name}: became required")
        _compare(old_prop, new_props[name], old_root, new_root, f"{path}.{name}", problems)
    for name in new_props.keys() - old_props.keys():
        if name in new_required:
            problems.append(f"{path}.{name}: new required property")

    if "enum" in old or "enum" in new:
        removed = [v for v in old.get("enum", ()) if v not in new.get("enum", ())]
        if "enum" not in new:
            pass  # widening to any value of the type is additive
        elif removed:
            problems.append(f"{path}: enum values removed: {removed}")

    for key in ("items",):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            _compare(old[key], new[key], old_root, new_root, f"{path}[]", problems)

    for key in ("anyOf", "oneOf"):
        old_alts, new_alts = old.get(key), new.get(key)
        if old_alts is None and new_alts is None:
            continue
        if old_alts is None or new_alts is None or len(new_alts) < len(old_alts):
            problems.append(f"{path}: {key} alternatives changed")
            continue
        for i, alt in enumerate(old_alts):
            _compare(alt, new_alts[i], old_root, new_root, f"{path}<{key}{i}>", problems)

    old_leaf = {k: v for k, v in old.items() if k not in _DESCRIPTIVE | _STRUCTURAL}
    new_leaf = {k: v for k, v in new.items() if k not in _DESCRIPTIVE | _STRUCTURAL}
    for key in old_leaf.keys() | new_leaf.keys():
        if key == "additionalProperties":
            continue
        if old_leaf.get(key) != new_leaf.get(key):
            problems.append(f"{path}: {key} changed from {old_leaf.get(key)!r} to {new_leaf.get(key)!r}")
