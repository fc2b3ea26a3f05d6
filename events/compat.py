"""Schema compatibility: what changed between a published contract and this agent's, and
whether the change breaks a consumer (docs/hub-contract.md, "Compatibility policy").

Why one module of ~862 lines: the policy is one walk (`_Walk`) over two documents side by side,
and every keyword rule in it reads the same resolved pair of nodes and the same notion of
"breaking"; split by keyword, each part would need the walk's whole state, and the policy
would no longer read in one place.

Both sides are JSON Schema documents as `edge-agent schema --out` writes them: draft 2020-12,
one per event type, with `$ref`/`$defs` as pydantic emits them and the data subschema a
resource of its own (`$id`). `compare` walks each published schema and this agent's side by
side, resolving `$ref` on both (a JSON pointer in the current resource, or the `$id` of a
resource in the same document), and returns one `Change` per difference: the type, the field
path (`data.value`; `(other fields)` and `(field names)` for what an object says of the fields
it does not list), the kind and whether it breaks consumers.

The policy, as code (the docs give the reasons):
- A consumer ignores what it does not know. So a minor version may add what a consumer can
  ignore: an optional data field, an optional envelope extension attribute (when the published
  envelope admits it: CloudEvents naming, a CloudEvents type), a new event type. Notes only.
- What a consumer already reads keeps its value space, both ways. Narrower (a type, a bound, a
  length, a pattern or format added, a value dropped from an enum) refuses events that older
  agents still publish under the same type; wider (`integer` to `number`, a `null` never sent
  before, a bound relaxed, a value added to an enum) hands consumers written against the
  published schema a value they were promised never to see. Both break, as do a removed field,
  a new required field, a field no longer required, a changed `const` or unit, and a published
  type that is gone or retired.
- Documentation (`title`, `description`, `examples`, `$comment`) is not compared; a changed
  `default`, `x-version` or a newly stated unit is a note. A keyword this module does not
  model is compared by equality, and any change to it breaks (the safe answer).

The schema keywords of the contract that JSON Schema does not define (annotations, ignored by
validators) are named here: `UNIT`, `UNIT_FIELD`, `VERSION`, `SUPERSEDED_BY`; so are the
CloudEvents rules for extension attributes the envelope admits (`EXTENSION_NAME`,
`EXTENSION_TYPES`).

Invariants: pure (no I/O) and imports nothing of ours. A document it cannot read (not a JSON
object, a keyword of the wrong JSON type, a `$ref` that resolves nowhere) raises `SchemaError`
naming the JSON pointer of the culprit (`validate_document` checks a whole document first;
`read_published` reads a folder's files, given as their texts, naming the file and the line and
column of text that is not JSON).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

# Annotation keywords of the published schemas (docs/hub-contract.md, "Schemas").
UNIT = "x-unit"  # the fixed unit of a field's value, a UCUM code: "s", "1"
UNIT_FIELD = "x-unit-field"  # the sibling field whose value is this field's UCUM unit: "unit"
VERSION = "x-version"  # "MAJOR.MINOR" of an event schema; MAJOR is the type name's `v<N>`
SUPERSEDED_BY = "x-superseded-by"  # on a retired (`deprecated`) type: the type replacing it
# Extension attributes (CloudEvents 1.0: lower-case ASCII letters and digits, at most 20
# characters; a String, Integer or Boolean in the JSON format, null meaning unset).
EXTENSION_NAME = "^[a-z0-9]{1,20}$"
EXTENSION_TYPES = ("string", "integer", "boolean", "null")


class SchemaError(ValueError):
    """A document that is not a JSON Schema this module can compare."""


class Kind(enum.StrEnum):
    TYPE_REMOVED = "type removed"
    TYPE_RETIRED = "type retired"
    TYPE_ADDED = "new type"
    ID_CHANGED = "schema id changed"
    FIELD_REMOVED = "field removed"
    FIELD_ADDED = "new optional field"
    REQUIRED_ADDED = "new required field"
    NOW_REQUIRED = "now required"
    NO_LONGER_REQUIRED = "no longer required"
    TYPE_CHANGED = "type changed"
    NARROWED = "narrowed"
    WIDENED = "widened"
    ENUM_VALUE_REMOVED = "enum value removed"
    ENUM_VALUE_ADDED = "enum value added"
    CONST_CHANGED = "const changed"
    UNIT_CHANGED = "unit changed"
    CLOSED = "closed"
    OPENED = "opened"
    ANNOTATION_ADDED = "annotation added"
    DEFAULT_CHANGED = "default changed"
    VERSION_CHANGED = "version changed"
    KEYWORD_CHANGED = "keyword changed"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between a published schema and this agent's."""

    type_name: str
    path: str  # "data.value", "traceparent"; "" for the type itself
    kind: Kind
    detail: str
    breaking: bool

    def __str__(self) -> str:
        where = f"{self.type_name} {self.path}" if self.path else self.type_name
        return f"{where}: {self.kind}: {self.detail}"


def compare(
    published: Mapping[str, Any], produced: Mapping[str, Any]
) -> list[Change]:
    """Every change from the published schemas to the produced ones, both keyed by versioned
    type name: a published type this agent lacks breaks, one it adds is a note."""
    changes: list[Change] = []
    for name in sorted(published):
        if name not in produced:
            changes.append(Change(
                name, "", Kind.TYPE_REMOVED,
                "this agent no longer has it: its consumers would receive nothing", True,
            ))
        else:
            changes.extend(compare_schema(name, published[name], produced[name]))
    for name in sorted(set(produced) - set(published)):
        changes.append(
            Change(name, "", Kind.TYPE_ADDED, "not published yet (its own topic)", False)
        )
    return changes


def compare_schema(type_name: str, published: Any, produced: Any) -> list[Change]:
    """Every change from one type's published schema to the produced one."""
    walk = _Walk(type_name, _Document(published), _Document(produced))
    walk.schema()
    return walk.changes


def validate_document(document: Any) -> None:
    """SchemaError unless `document` is a schema `compare` can read: a JSON object, every
    keyword it uses of the right JSON type, every `$ref` resolvable within the document."""
    _Document(document).check_refs()


SCHEMA_FILE_SUFFIX = ".schema.json"  # `edge-agent schema --out DIR` writes TYPE.schema.json


def read_published(files: Mapping[str, str]) -> dict[str, Any]:
    """The published schemas of a folder, keyed by type name, from the text of each of its
    `TYPE.schema.json` files (keyed by the file's path). SchemaError naming the file, and the
    line and column or the JSON pointer, of the first one `compare` cannot read: not JSON, not
    a schema (`validate_document`), a `type` other than its file's name, or no files at all."""
    if not files:
        raise SchemaError(
            f"no TYPE{SCHEMA_FILE_SUFFIX} files (`edge-agent schema --out` writes them)"
        )
    published: dict[str, Any] = {}
    for path, text in files.items():
        name = re.split(r"[\\/]", path)[-1]
        if not name.endswith(SCHEMA_FILE_SUFFIX):
            raise SchemaError(f"{path}: not a TYPE{SCHEMA_FILE_SUFFIX} file")
        type_name = name.removesuffix(SCHEMA_FILE_SUFFIX)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise SchemaError(
                f"{path}:{error.lineno}:{error.colno}: not JSON: {error.msg}"
            ) from error
        try:
            validate_document(document)
        except SchemaError as error:
            raise SchemaError(f"{path}: {error}") from error
        declared = document.get("properties", {}).get("type", {})
        if isinstance(declared, Mapping) and declared.get("const", type_name) != type_name:
            raise SchemaError(
                f"{path}: /properties/type/const: {_show(declared['const'])} is not the type "
                f"its file name says ({type_name})"
            )
        published[type_name] = document
    return published


# --- reading a document -------------------------------------------------------------------------

_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_SINGLES = (
    "items", "additionalProperties", "propertyNames", "not", "if", "then", "else", "contains",
    "unevaluatedProperties", "unevaluatedItems",
)
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_TEXTS = ("$ref", "$id", "$anchor", "$schema", "pattern", "format", UNIT, UNIT_FIELD, VERSION)
_FLAGS = ("uniqueItems", "deprecated")
# Keywords compared by their own rules (or not at all: structure and documentation).
_MODELLED = frozenset({
    "type", "enum", "const", *_NUMBERS, "minLength", "maxLength", "pattern", "format",
    "items", "prefixItems", "minItems", "maxItems", "uniqueItems",
    "properties", "required", "additionalProperties", "propertyNames",
    "anyOf", "oneOf", "allOf", "$ref", "$id", "$anchor", "$schema", "$defs", "definitions",
})
_DOCUMENTATION = frozenset({
    "title", "description", "examples", "$comment", "default", "deprecated", "readOnly",
    "writeOnly",
})


@dataclass(frozen=True, slots=True)
class _Node:
    """A subschema, the resource its `#` fragments resolve in, and where it is (a pointer)."""

    schema: Any  # a mapping or a boolean schema
    base: Mapping[str, Any]
    base_pointer: str
    pointer: str

    def child(self, schema: Any, *tokens: str | int) -> _Node:
        pointer = self.pointer + "".join(
            "/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens
        )
        if isinstance(schema, Mapping) and "$id" in schema:
            return _Node(schema, schema, pointer, pointer)
        return _Node(schema, self.base, self.base_pointer, pointer)


class _Document:
    def __init__(self, document: Any) -> None:
        if not isinstance(document, Mapping):
            raise SchemaError("not a JSON Schema: the document is not a JSON object")
        self.root = _Node(document, document, "", "")
        self.resources: dict[str, _Node] = {}
        self._refs: list[_Node] = []
        self._index(self.root)

    def _index(self, node: _Node) -> None:
        schema = node.schema
        if isinstance(schema, bool):
            return
        if not isinstance(schema, Mapping):
            raise SchemaError(f"{node.pointer or '/'}: a schema must be an object or a boolean")
        _check_keywords(node)
        if "$id" in schema:
            self.resources.setdefault(schema["$id"], node)
        if "$ref" in schema:
            self._refs.append(node)
        for child in _subschemas(node):
            self._index(child)

    def check_refs(self) -> None:
        for node in self._refs:
            self.resolve(node)

    def resolve(self, node: _Node) -> tuple[_Node, tuple[str, ...]]:
        """`node` with its `$ref` chain followed: the target's keywords, the referring
        schema's own next to `$ref` laid over them; and the refs followed."""
        refs: list[str] = []
        while isinstance(node.schema, Mapping) and "$ref" in node.schema:
            ref = node.schema["$ref"]
            if ref in refs:
                raise SchemaError(f"{node.pointer}/$ref: {ref!r} refers to itself")
            refs.append(ref)
            target = self._lookup(ref, node)
            siblings = {key: value for key, value in node.schema.items() if key != "$ref"}
            if isinstance(target.schema, bool):
                merged: Any = target.schema if not target.schema or not siblings else siblings
            else:
                merged = {**target.schema, **siblings}
            node = replace(target, schema=merged)
        return node, tuple(refs)

    def _lookup(self, ref: str, node: _Node) -> _Node:
        uri, _, fragment = ref.partition("#")
        if uri:
            resource = self.resources.get(uri)
            if resource is None:
                raise SchemaError(
                    f"{node.pointer}/$ref: {ref!r}: no schema in this document has that $id"
                )
        else:
            resource = _Node(node.base, node.base, node.base_pointer, node.base_pointer)
        fragment = unquote(fragment)
        if not fragment:
            return resource
        if not fragment.startswith("/"):
            for found in self._walk(resource):
                if isinstance(found.schema, Mapping) and found.schema.get("$anchor") == fragment:
                    return found
            raise SchemaError(f"{node.pointer}/$ref: {ref!r}: no such $anchor")
        target = resource
        for token in fragment[1:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            schema = target.schema
            if isinstance(schema, Mapping) and token in schema:
                target = target.child(schema[token], token)
            elif isinstance(schema, list) and token.isdigit() and int(token) < len(schema):
                target = target.child(schema[int(token)], int(token))
            else:
                raise SchemaError(f"{node.pointer}/$ref: {ref!r}: resolves to nothing")
        return target

    def _walk(self, node: _Node) -> Iterator[_Node]:
        yield node
        if isinstance(node.schema, Mapping):
            for child in _subschemas(node):
                yield from self._walk(child)


def _subschemas(node: _Node) -> Iterator[_Node]:
    schema = node.schema
    for key in _SCHEMA_MAPS:
        for name, sub in schema.get(key, {}).items():
            yield node.child(sub, key, name)
    for key in _SCHEMA_LISTS:
        for index, sub in enumerate(schema.get(key, [])):
            yield node.child(sub, key, index)
    for key in _SCHEMA_SINGLES:
        if key in schema:
            yield node.child(schema[key], key)


def _check_keywords(node: _Node) -> None:
    """SchemaError for a keyword of the wrong JSON type (what the walk relies on)."""
    schema = node.schema

    def wrong(key: str, expected: str) -> SchemaError:
        return SchemaError(f"{node.pointer}/{key}: must be {expected}, not {_show(schema[key])}")

    for key in _SCHEMA_MAPS:
        if key in schema and not (
            isinstance(schema[key], Mapping)
            and all(isinstance(sub, Mapping | bool) for sub in schema[key].values())
        ):
            raise wrong(key, "an object of schemas")
    for key in _SCHEMA_LISTS:
        if key in schema and not (
            isinstance(schema[key], list) and (schema[key] or key == "prefixItems")
            and all(isinstance(sub, Mapping | bool) for sub in schema[key])
        ):
            raise wrong(key, "a non-empty array of schemas")
    for key in _SCHEMA_SINGLES:
        if key in schema and not isinstance(schema[key], Mapping | bool):
            raise wrong(key, "a schema (an object or a boolean)")
    for key in _NUMBERS:
        if key in schema and (isinstance(schema[key], bool) or not _is_number(schema[key])):
            raise wrong(key, "a number")
    if "multipleOf" in schema and schema["multipleOf"] <= 0:
        raise wrong("multipleOf", "greater than 0")
    for key in _COUNTS:
        value = schema.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong(key, "a non-negative integer")
    for key in _TEXTS:
        if key in schema and not isinstance(schema[key], str):
            raise wrong(key, "a string")
    for key in _FLAGS:
        if key in schema and not isinstance(schema[key], bool):
            raise wrong(key, "true or false")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not types or not all(each in _TYPES for each in types):
            raise wrong("type", f"one of {', '.join(_TYPES)} (or an array of them)")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise wrong("enum", "an array")
    if "required" in schema and not (
        isinstance(schema["required"], list)
        and all(isinstance(name, str) for name in schema["required"])
    ):
        raise wrong("required", "an array of strings")


# --- comparing ----------------------------------------------------------------------------------

@dataclass
class _Walk:
    type_name: str
    old: _Document
    new: _Document
    changes: list[Change] = field(default_factory=list)

    def add(self, path: str, kind: Kind, detail: str, breaking: bool) -> None:
        change = Change(self.type_name, path, kind, detail, breaking)
        if change not in self.changes:  # a keyword seen from several type branches
            self.changes.append(change)

    def schema(self) -> None:
        old, new = self.old.root.schema, self.new.root.schema
        if old.get(VERSION) != new.get(VERSION):
            self.add("", Kind.VERSION_CHANGED,
                     f"{old.get(VERSION, 'none')} -> {new.get(VERSION, 'none')}", False)
        if new.get("deprecated") is True and old.get("deprecated") is not True:
            successor = new.get(SUPERSEDED_BY)
            self.add("", Kind.TYPE_RETIRED, (
                f"this agent no longer produces it; consumers move to {successor}"
                if successor else "this agent no longer produces it"
            ) + " (agents publish both only for their dual-publish window)", True)
        elif old.get("deprecated") is True and new.get("deprecated") is not True:
            self.add("", Kind.TYPE_ADDED, "retired before, produced again", False)
        self.value(self.old.root, self.new.root, "", True, frozenset())

    def value(
        self, old: _Node, new: _Node, path: str, known: bool,
        active: frozenset[tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        """Compare the value spaces of two subschemas at `path`. `known`: consumers read
        these values (a wider space breaks them), else they ignore them (a wider one is a
        note)."""
        old, old_refs = self.old.resolve(old)
        new, new_refs = self.new.resolve(new)
        if old_refs or new_refs:
            if (old_refs, new_refs) in active:
                return  # a recursive schema: this pair is being compared further up
            active = active | {(old_refs, new_refs)}
        self.annotations(old.schema, new.schema, path)
        if _unconstrained(old.schema) and _unconstrained(new.schema):
            return  # any value, both sides (and `items`/`additionalProperties` of it, too)
        old_branches = _branches(self.old, old)
        new_branches = _branches(self.new, new)
        narrowed = [t for t in old_branches if not _accepts(new_branches, t)]
        widened = [t for t in new_branches if not _accepts(old_branches, t)]
        change = f"type {_type_text(old_branches)} -> {_type_text(new_branches)}"
        if narrowed and widened:
            self.add(path, Kind.TYPE_CHANGED, change, True)
        elif narrowed:
            self.add(path, Kind.NARROWED, change, True)
        elif widened:
            self.add(path, Kind.WIDENED, change, known)
        for json_type in _TYPES:
            if json_type in new_branches and _accepts(old_branches, json_type):
                old_type = json_type if json_type in old_branches else "number"
                self.branch(
                    json_type, old_branches[old_type], new_branches[json_type], path, known,
                    active,
                )

    def annotations(self, old: Any, new: Any, path: str) -> None:
        if not isinstance(old, Mapping) or not isinstance(new, Mapping):
            return
        if old.get("$id") != new.get("$id"):
            if "$id" not in old:
                self.add(path, Kind.ANNOTATION_ADDED, f"$id {new['$id']}", False)
            else:
                self.add(path, Kind.ID_CHANGED, (
                    f"{old['$id']} -> {new.get('$id', 'none')}: consumers resolve "
                    "`dataschema` and `$ref` by it"
                ), True)
        for key, what in ((UNIT, "unit"), (UNIT_FIELD, "unit given by field")):
            if old.get(key) == new.get(key):
                continue
            if key not in old:
                self.add(path, Kind.ANNOTATION_ADDED, f"{what} {new[key]!r} stated", False)
            else:
                self.add(
                    path, Kind.UNIT_CHANGED,
                    f"{what} {old[key]!r} -> {_show(new.get(key, _ABSENT))}", True,
                )
        if old.get("default") != new.get("default") and "default" in new:
            self.add(path, Kind.DEFAULT_CHANGED,
                     f"{_show(old.get('default'))} -> {_show(new['default'])}", False)

    def branch(
        self, json_type: str, old: _Node, new: _Node, path: str, known: bool,
        active: frozenset[tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        """Compare the constraints two schemas put on values of one JSON type."""
        self.values(json_type, old.schema, new.schema, path, known)
        if json_type in ("integer", "number"):
            self.numbers(old.schema, new.schema, path, known)
        elif json_type == "string":
            self.strings(old.schema, new.schema, path, known)
        elif json_type == "array":
            self.arrays(old, new, path, known, active)
        elif json_type == "object":
            self.objects(old, new, path, known, active)
        self.unmodelled(old.schema, new.schema, path)

    def values(
        self, json_type: str, old: Mapping[str, Any], new: Mapping[str, Any], path: str,
        known: bool,
    ) -> None:
        old_values, new_values = _allowed(old, json_type), _allowed(new, json_type)
        if old_values is None and new_values is None:
            return
        if old_values is None:
            assert new_values is not None
            self.add(path, Kind.NARROWED, f"now only {_list(new_values)}", True)
        elif new_values is None:
            self.add(path, Kind.WIDENED, f"no longer only {_list(old_values)}", known)
        elif "const" in old or "const" in new:
            if old_values.keys() != new_values.keys():
                self.add(path, Kind.CONST_CHANGED,
                         f"{_list(old_values)} -> {_list(new_values)}", True)
        else:
            if removed := {k: v for k, v in old_values.items() if k not in new_values}:
                self.add(path, Kind.ENUM_VALUE_REMOVED, f"{_list(removed)} removed", True)
            if added := {k: v for k, v in new_values.items() if k not in old_values}:
                self.add(path, Kind.ENUM_VALUE_ADDED, (
                    f"{_list(added)} added: a consumer's switch over the values meets one "
                    "it does not know"
                ), known)

    def numbers(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str, known: bool
    ) -> None:
        for which, bound in (("lower bound", _lower), ("upper bound", _upper)):
            old_bound, new_bound = bound(old), bound(new)
            if old_bound == new_bound:
                continue
            detail = f"{which} {_bound_text(old_bound)} -> {_bound_text(new_bound)}"
            if _tightness(new_bound, which) > _tightness(old_bound, which):
                self.add(path, Kind.NARROWED, detail, True)
            else:
                self.add(path, Kind.WIDENED, detail, known)
        old_step, new_step = old.get("multipleOf"), new.get("multipleOf")
        if old_step != new_step:
            detail = f"multipleOf {_show(old_step)} -> {_show(new_step)}"
            if new_step is None:
                self.add(path, Kind.WIDENED, detail, known)
            elif old_step is not None and (old_step / new_step).is_integer():
                self.add(path, Kind.WIDENED, detail, known)
            else:
                self.add(path, Kind.NARROWED, detail, True)

    def strings(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str, known: bool
    ) -> None:
        self.lengths(old, new, path, known, "minLength", "maxLength")
        for key in ("pattern", "format"):
            old_text, new_text = old.get(key), new.get(key)
            if old_text == new_text:
                continue
            if old_text is None:
                self.add(path, Kind.NARROWED, f"{key} {new_text!r} added", True)
            elif new_text is None:
                self.add(path, Kind.WIDENED, f"{key} {old_text!r} removed", known)
            else:
                self.add(path, Kind.NARROWED, f"{key} {old_text!r} -> {new_text!r}", True)

    def lengths(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: str, known: bool,
        least: str, most: str,
    ) -> None:
        old_least, new_least = old.get(least, 0), new.get(least, 0)
        if new_least > old_least:
            self.add(path, Kind.NARROWED, f"{least} {old_least} -> {new_least}", True)
        elif new_least < old_least:
            self.add(path, Kind.WIDENED, f"{least} {old_least} -> {new_least}", known)
        old_most, new_most = old.get(most), new.get(most)
        if old_most != new_most:
            detail = f"{most} {_show(old_most)} -> {_show(new_most)}"
            if new_most is not None and (old_most is None or new_most < old_most):
                self.add(path, Kind.NARROWED, detail, True)
            else:
                self.add(path, Kind.WIDENED, detail, known)

    def arrays(
        self, old: _Node, new: _Node, path: str, known: bool,
        active: frozenset[tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        self.lengths(old.schema, new.schema, path, known, "minItems", "maxItems")
        old_unique = old.schema.get("uniqueItems", False)
        new_unique = new.schema.get("uniqueItems", False)
        if old_unique != new_unique:
            kind = Kind.NARROWED if new_unique else Kind.WIDENED
            self.add(path, kind, f"uniqueItems {old_unique} -> {new_unique}",
                     kind is Kind.NARROWED or known)
        old_prefix = old.schema.get("prefixItems", [])
        new_prefix = new.schema.get("prefixItems", [])
        for index in range(max(len(old_prefix), len(new_prefix))):
            self.value(
                _item(old, index), _item(new, index), f"{path}[{index}]", known, active
            )
        self.value(
            old.child(old.schema.get("items", True), "items"),
            new.child(new.schema.get("items", True), "items"),
            f"{path}[]", known, active,
        )

    def objects(
        self, old: _Node, new: _Node, path: str, known: bool,
        active: frozenset[tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        old_fields = old.schema.get("properties", {})
        new_fields = new.schema.get("properties", {})
        old_required = set(old.schema.get("required", []))
        new_required = set(new.schema.get("required", []))
        names = [*old_fields, *(name for name in new_fields if name not in old_fields)]
        names += sorted((old_required | new_required) - set(names))
        for name in names:
            at = f"{path}.{name}" if path else name
            if name in old_fields and name not in new_fields:
                self.add(at, Kind.FIELD_REMOVED, (
                    "a required field is gone" if name in old_required
                    else "consumers that read it get nothing, silently"
                ), True)
                continue
            if name not in old_fields and name in new_fields and name not in new_required:
                self.added_field(old, new.child(new_fields[name], "properties", name), name, at)
                continue
            if name not in old_required and name in new_required:
                if name in old_fields:
                    self.add(at, Kind.NOW_REQUIRED,
                             "events of older agents that leave it out are refused", True)
                else:
                    self.add(at, Kind.REQUIRED_ADDED,
                             "events of older agents, without it, are refused", True)
            elif name in old_required and name not in new_required:
                self.add(at, Kind.NO_LONGER_REQUIRED,
                         "consumers that rely on it meet events without it", True)
            if name in old_fields and name in new_fields:
                self.value(
                    old.child(old_fields[name], "properties", name),
                    new.child(new_fields[name], "properties", name),
                    at, known, active,
                )
        self.other_fields(old, new, path, active)

    def added_field(self, old: _Node, new_field: _Node, name: str, at: str) -> None:
        """A new optional field: a note, unless the published schema refuses it."""
        types = _branches(self.new, self.new.resolve(new_field)[0])
        shown = _type_text(types)
        allowed = old.schema.get("additionalProperties", True)
        for pattern, sub in old.schema.get("patternProperties", {}).items():
            if _matches(pattern, name):
                allowed = sub
                break
        names = self.old.resolve(
            old.child(old.schema.get("propertyNames", True), "propertyNames")
        )[0].schema
        pattern = names.get("pattern") if isinstance(names, Mapping) else None
        if allowed is False:
            self.add(at, Kind.FIELD_ADDED, (
                f"{shown}: the published schema admits no other fields, so consumers "
                "validating against it refuse these events"
            ), True)
        elif pattern is not None and not _matches(pattern, name):
            self.add(at, Kind.FIELD_ADDED,
                     f"{shown}: the published schema admits only names matching {pattern}", True)
        else:
            admitted = _branches(
                self.old, self.old.resolve(old.child(allowed, "additionalProperties"))[0]
            )
            if all(_accepts(admitted, t) for t in types):
                self.add(at, Kind.FIELD_ADDED, shown, False)
            else:
                self.add(at, Kind.FIELD_ADDED, (
                    f"{shown}: the published schema admits other fields only as "
                    f"{_type_text(admitted)}"
                ), True)

    def other_fields(
        self, old: _Node, new: _Node, path: str,
        active: frozenset[tuple[tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        """What two objects say of the fields they do not list: consumers ignore those, so
        admitting more is a note and admitting less breaks."""
        prefix = f"{path}." if path else ""
        old_other = old.schema.get("additionalProperties", True)
        new_other = new.schema.get("additionalProperties", True)
        if old_other is not False and new_other is False:
            self.add(f"{prefix}(other fields)", Kind.CLOSED, (
                "no other fields admitted any more: events with fields that older agents "
                "send are refused"
            ), True)
        elif old_other is False and new_other is not False:
            self.add(f"{prefix}(other fields)", Kind.OPENED,
                     "other fields admitted (consumers ignore what they do not know)", False)
        elif old_other is not False:
            self.value(
                old.child(old_other, "additionalProperties"),
                new.child(new_other, "additionalProperties"),
                f"{prefix}(other fields)", False, active,
            )
        if old_other is not False and new_other is not False:
            self.value(
                old.child(old.schema.get("propertyNames", True), "propertyNames"),
                new.child(new.schema.get("propertyNames", True), "propertyNames"),
                f"{prefix}(field names)", False, active,
            )

    def unmodelled(self, old: Any, new: Any, path: str) -> None:
        keys = (set(old) | set(new)) - _MODELLED - _DOCUMENTATION
        for key in sorted(keys):
            if key.startswith("x-"):
                continue  # annotations; the contract's own are compared above
            if old.get(key, _ABSENT) != new.get(key, _ABSENT):
                self.add(path, Kind.KEYWORD_CHANGED, (
                    f"{key} {_show(old.get(key, _ABSENT))} -> {_show(new.get(key, _ABSENT))} "
                    "(a keyword this check does not model: treated as breaking)"
                ), True)


_ABSENT: Any = type("_Absent", (), {"__repr__": lambda self: "none"})()


# Keywords that say nothing of the values a schema admits.
_NOT_CONSTRAINTS = _DOCUMENTATION | {"$id", "$schema", "$anchor", "$defs", "definitions"}


def _unconstrained(schema: Any) -> bool:
    """`schema` admits every value (`true`, `{}`, or only documentation and annotations)."""
    return schema is True or (isinstance(schema, Mapping) and all(
        key in _NOT_CONSTRAINTS or key.startswith("x-") for key in schema
    ))


def _item(array: _Node, index: int) -> _Node:
    prefix = array.schema.get("prefixItems", [])
    if index < len(prefix):
        return array.child(prefix[index], "prefixItems", index)
    return array.child(array.schema.get("items", True), "items")


def _branches(document: _Document, node: _Node) -> dict[str, _Node]:
    """The schema (resolved) split by the JSON type of the values it admits: each type with
    the schema whose constraints apply to it (`anyOf`/`oneOf` alternatives merged per type;
    an `allOf` taken as its keywords together)."""
    schema = node.schema
    if schema is True:
        return {json_type: replace(node, schema={}) for json_type in _TYPES}
    if schema is False:
        return {}
    if "allOf" in schema:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for index, sub in enumerate(schema["allOf"]):
            part = document.resolve(node.child(sub, "allOf", index))[0].schema
            if part is False:
                return {}
            if isinstance(part, Mapping):
                merged = {**merged, **part}
        return _branches(document, replace(node, schema=merged))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            shared = {
                k: v for k, v in schema.items() if k not in (key, *_DOCUMENTATION)
                and not k.startswith("x-") and k != "$id"
            }
            found: dict[str, _Node] = {}
            for index, sub in enumerate(schema[key]):
                alternative = document.resolve(node.child(sub, key, index))[0]
                if shared and isinstance(alternative.schema, Mapping):
                    alternative = replace(alternative, schema={**shared, **alternative.schema})
                for json_type, branch in _branches(document, alternative).items():
                    found[json_type] = (
                        _merge(found[json_type], branch, json_type)
                        if json_type in found else branch
                    )
            return found
    types = schema.get("type")
    if types is None:
        if "const" in schema:
            types = [_json_type(schema["const"])]
        elif "enum" in schema:
            types = [t for t in _TYPES if any(_json_type(v) == t for v in schema["enum"])]
        else:
            types = list(_TYPES)
    elif isinstance(types, str):
        types = [types]
    return {json_type: node for json_type in types}


def _merge(first: _Node, second: _Node, json_type: str) -> _Node:
    """Two alternatives for one JSON type as one: the values either admits, and of the other
    constraints only those both share (never narrower than the pair)."""
    a, b = first.schema, second.schema
    merged = {k: v for k, v in a.items() if b.get(k, _ABSENT) == v and k not in ("enum", "const")}
    a_values, b_values = _allowed(a, json_type), _allowed(b, json_type)
    if a_values is not None and b_values is not None:
        merged["enum"] = [*a_values.values()]
        merged["enum"] += [value for key, value in b_values.items() if key not in a_values]
    return replace(first, schema=merged)


def _accepts(branches: Mapping[str, Any], json_type: str) -> bool:
    return json_type in branches or (json_type == "integer" and "number" in branches)


def _type_text(branches: Mapping[str, Any]) -> str:
    if all(json_type in branches for json_type in _TYPES):
        return "any"
    return "|".join(t for t in _TYPES if t in branches) or "nothing"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _allowed(schema: Mapping[str, Any], json_type: str) -> dict[str, Any] | None:
    """The values of `json_type` the schema admits, keyed by their JSON text; None: any."""
    if "const" in schema:
        values = [schema["const"]]
    elif "enum" in schema:
        values = schema["enum"]
    else:
        return None
    admitted: dict[str, Any] = {}
    for value in values:
        own = _json_type(value)
        if own == json_type or (json_type == "number" and own == "integer"):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            admitted[json.dumps(value, sort_keys=True)] = value
    return admitted


def _lower(schema: Mapping[str, Any]) -> tuple[float, bool] | None:
    bounds = [(schema["minimum"], False)] if "minimum" in schema else []
    if "exclusiveMinimum" in schema:
        bounds.append((schema["exclusiveMinimum"], True))
    return max(bounds) if bounds else None


def _upper(schema: Mapping[str, Any]) -> tuple[float, bool] | None:
    bounds = [(schema["maximum"], False)] if "maximum" in schema else []
    if "exclusiveMaximum" in schema:
        bounds.append((schema["exclusiveMaximum"], True))
    return min(bounds, key=lambda bound: (bound[0], not bound[1])) if bounds else None


def _tightness(bound: tuple[float, bool] | None, which: str) -> tuple[float, bool]:
    """Orders bounds: the tighter one (admitting fewer values) is greater."""
    if bound is None:
        return (float("-inf"), False)
    value, exclusive = bound
    return (value, exclusive) if which == "lower bound" else (-value, exclusive)


def _bound_text(bound: tuple[float, bool] | None) -> str:
    if bound is None:
        return "none"
    value, exclusive = bound
    return f"{'exclusive ' if exclusive else ''}{value}"


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:  # ECMA 262 syntax Python lacks: cannot tell, so not admitted
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)


def _list(values: Mapping[str, Any]) -> str:
    return ", ".join(values)


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "none"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
