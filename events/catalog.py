"""The published schemas as a reader's catalog: every event type with its schema `$id`, its
version, its data fields (type, required, unit, description) and its example, in Markdown.

`edge-agent schema --markdown` prints it; docs/hub-contract.md ("Event types") holds it between
the `BEGIN`/`END` marker lines, and tests/unit/test_contracts.py checks that what is there is
`render(json_schemas())`, so the docs cannot drift from the schemas.

Invariants: pure (the same schemas always give the same text, ending with a newline), imports
only `events.compat` (for the annotation keywords); it reads schemas as `events.models`
writes them (the data subschema at `properties.data`, its `$ref`s within it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from events.compat import SUPERSEDED_BY, UNIT, UNIT_FIELD, VERSION

BEGIN = "<!-- edge-agent schema --markdown: BEGIN (generated; do not edit by hand) -->"
END = "<!-- edge-agent schema --markdown: END -->"


def render(schemas: Mapping[str, Mapping[str, Any]]) -> str:
    """The catalog of `schemas` (keyed by type name): the envelope's attributes (as the first
    type has them), then every type in name order."""
    names = sorted(schemas)
    return "\n".join([_envelope(schemas[names[0]]), *(_type(n, schemas[n]) for n in names)])


def _envelope(schema: Mapping[str, Any]) -> str:
    lines = [
        "### The envelope",
        "",
        "Every type's schema has these attributes; `type` and `dataschema` are the type's "
        "own constants.",
        "",
        "| attribute | type | required | description |",
        "|---|---|---|---|",
    ]
    required = set(schema.get("required", []))
    for name, sub in schema["properties"].items():
        shown = "string" if name in ("type", "dataschema") else _type_text(sub, schema)
        described = sub.get("description", "")
        if name == "data":
            shown, described = "object", "The type's data, as its `dataschema` says (below)."
        lines.append(
            f"| `{name}` | {shown} | {'yes' if name in required else ''} | {_cell(described)} |"
        )
    return "\n".join([*lines, ""])


def generated(text: str) -> str:
    """What stands between the catalog's marker lines in `text`, without them. ValueError when
    `text` has not exactly one of each, in order."""
    lines = text.splitlines(keepends=True)
    stripped = [line.rstrip("\n") for line in lines]
    if stripped.count(BEGIN) != 1 or stripped.count(END) != 1:
        raise ValueError(f"expected one {BEGIN!r} line and one {END!r} line")
    begin, end = stripped.index(BEGIN), stripped.index(END)
    if end < begin:
        raise ValueError(f"{END!r} comes before {BEGIN!r}")
    return "".join(lines[begin + 1 : end])


def replaced(text: str, rendered: str) -> str:
    """`text` with what stands between the catalog's marker lines replaced by `rendered`."""
    generated(text)  # the markers are there, once each, in order
    lines = text.splitlines(keepends=True)
    stripped = [line.rstrip("\n") for line in lines]
    begin, end = stripped.index(BEGIN), stripped.index(END)
    return "".join([*lines[: begin + 1], rendered, *lines[end:]])


def _type(name: str, schema: Mapping[str, Any]) -> str:
    data = schema["properties"]["data"]
    status = f"version {schema.get(VERSION, '?')}"
    if schema.get("deprecated"):
        status += f", **retired**: superseded by `{schema.get(SUPERSEDED_BY, '?')}`"
    lines = [
        f"### `{name}`",
        "",
        f"{_cell(data.get('description', ''))} ({status})",
        "",
        f"- schema `$id`: `{schema['$id']}`",
        f"- `dataschema` (the data's `$id`): `{data['$id']}`",
        "",
        "| data field | type | required | unit | description |",
        "|---|---|---|---|---|",
    ]
    required = set(data.get("required", []))
    for field, sub in data.get("properties", {}).items():
        lines.append(
            f"| `{field}` | {_type_text(sub, data)} | {'yes' if field in required else ''} "
            f"| {_unit_text(sub)} | {_cell(sub.get('description', ''))} |"
        )
    lines += ["", "```json", _json(schema["examples"][0]), "```", ""]
    return "\n".join(lines)


def _json(value: Any, depth: int = 0) -> str:
    """`value` as JSON: the event's and its data's members one a line, anything deeper on
    the line of its member."""
    if not isinstance(value, Mapping) or depth > 1 or not value:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    indent = "  " * (depth + 1)
    members = ",\n".join(
        f"{indent}{json.dumps(key)}: {_json(member, depth + 1)}" for key, member in value.items()
    )
    return f"{{\n{members}\n{'  ' * depth}}}"


def _unit_text(schema: Mapping[str, Any]) -> str:
    if UNIT in schema:
        return f"`{schema[UNIT]}`"
    if UNIT_FIELD in schema:
        return f"in `{schema[UNIT_FIELD]}`"
    return ""


def _type_text(schema: Any, resource: Mapping[str, Any]) -> str:
    """A short text of the values `schema` admits (`$ref`s resolved within `resource`)."""
    if not isinstance(schema, Mapping):
        return "any" if schema else "nothing"
    if "$ref" in schema:
        target: Any = resource
        for token in schema["$ref"].removeprefix("#/").split("/"):
            target = target[token]
        return _type_text(target, resource)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type_text(sub, resource) for sub in schema[key])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    text = str(schema.get("type", "any"))
    if text == "array":
        if "prefixItems" in schema:
            items = ", ".join(_type_text(sub, resource) for sub in schema["prefixItems"])
            text = f"array of [{items}]"
        elif "items" in schema:
            text = f"array of {_type_text(schema['items'], resource)}"
    if "format" in schema:
        text += f" ({schema['format']})"
    bounds = [
        f"{sign} {schema[key]:g}" for key, sign in (
            ("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
        ) if key in schema
    ]
    if schema.get("minLength") == 1:
        bounds.append("non-empty")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
