"""Structured output: a user's `output_schema` as the wire's `json_schema` format.

Strict mode needs every object closed (`additionalProperties: false`) with all its properties
required, and a subset of JSON Schema. A schema is sent with `strict: true` only when it meets
those rules; otherwise with `strict: false` as guidance, and the answer is validated locally. A
schema whose root is not an object is wrapped as `{"value": ...}`, since providers require an
object root.
"""

from __future__ import annotations

from typing import Any

_CLOSED_ONLY = {"allOf", "oneOf", "not", "if", "then", "else", "patternProperties",
                "dependentRequired", "dependentSchemas", "unevaluatedProperties",
                "propertyNames", "minProperties", "maxProperties"}  # fmt: skip


def json_schema_format(schema: dict[str, Any], name: str = "output") -> tuple[dict[str, Any], bool]:
    """The `text.format` for a user schema, and whether the root was wrapped as {"value": ...}."""
    wrapped = schema.get("type") != "object"
    wire = schema
    if wrapped:
        inner = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
        wire = {"type": "object", "properties": {"value": inner}, "required": ["value"]}
        wire["additionalProperties"] = False
        wire.update({k: schema[k] for k in ("$defs", "definitions") if k in schema})
    fmt = {"type": "json_schema", "name": name, "schema": wire, "strict": strict_compatible(wire)}
    return fmt, wrapped


def strict_compatible(schema: Any) -> bool:
    """Whether a schema meets strict structured output's rules (closed, all-required objects)."""
    if not isinstance(schema, dict):
        return False  # boolean schemas are not allowed in strict mode
    if _CLOSED_ONLY & set(schema):
        return False
    types = schema.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types)
    if is_object or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(
            schema.get("required") or []
        ) != set(props):
            return False
    children: list[Any] = list((schema.get("properties") or {}).values())
    children += list((schema.get("$defs") or {}).values()) + list(
        (schema.get("definitions") or {}).values()
    )
    children += list(schema.get("anyOf") or []) + list(schema.get("prefixItems") or [])
    if "items" in schema:
        children.append(schema["items"])
    return all(strict_compatible(child) for child in children)
