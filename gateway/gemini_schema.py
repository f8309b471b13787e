"""Gemini's Schema (the OpenAPI 3.0 subset its `responseSchema` and a function's `parameters` use: upper-case
`type`s, `nullable`, `propertyOrdering`) as the JSON Schema OpenAI's `response_format` and tools take. A
`responseJsonSchema` or `parametersJsonSchema` is JSON Schema already and goes as it is."""

from __future__ import annotations

from typing import Any

from engine.server.errors import bad_request

_TYPES = {"STRING": "string", "NUMBER": "number", "INTEGER": "integer", "BOOLEAN": "boolean", "ARRAY": "array",
          "OBJECT": "object", "NULL": "null"}
# Keys kept as they are (their JSON Schema meaning is the same); snake_case spellings are Google's REST aliases.
_KEPT = ("format", "title", "description", "enum", "required", "minItems", "maxItems", "minimum", "maximum",
         "minLength", "maxLength", "pattern", "default", "minProperties", "maxProperties")
_DROPPED = ("propertyOrdering", "example", "nullable", "type", "items", "properties", "anyOf")


def camel(key: str) -> str:
    """Google's REST takes a field by its proto name (`max_output_tokens`) or its JSON name (`maxOutputTokens`)."""
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def camel_keys(value: Any) -> Any:
    """An object's own keys in their JSON names (not its values': a schema's property names stay)."""
    return {camel(k): v for k, v in value.items()} if isinstance(value, dict) else value


def json_schema(schema: Any, where: str) -> dict:
    """The JSON Schema a Gemini Schema stands for; a 400 naming where it is not one."""
    if not isinstance(schema, dict):
        raise bad_request(f"'{where}' must be a Schema object", where, "invalid_type")
    schema = camel_keys(schema)
    unknown = sorted(set(schema) - {*_KEPT, *_DROPPED})
    if unknown:
        raise bad_request(f"'{where}' has an unknown Schema field {unknown[0]!r}", f"{where}.{unknown[0]}",
                          "unknown_field")
    converted: dict[str, Any] = {key: schema[key] for key in _KEPT if key in schema}
    kind = schema.get("type")
    if kind is not None and kind != "TYPE_UNSPECIFIED":
        if not isinstance(kind, str) or kind.upper() not in _TYPES:
            raise bad_request(f"'{where}.type' must be one of {', '.join(_TYPES)}", f"{where}.type", "invalid_value")
        converted["type"] = _TYPES[kind.upper()]
        if schema.get("nullable") is True:  # OpenAPI 3.0's way of saying JSON Schema's ["t", "null"]
            converted["type"] = [converted["type"], "null"]
    if "items" in schema:
        converted["items"] = json_schema(schema["items"], f"{where}.items")
    if "properties" in schema:
        properties = schema["properties"]
        if not isinstance(properties, dict):
            raise bad_request(f"'{where}.properties' must be an object", f"{where}.properties", "invalid_type")
        converted["properties"] = {name: json_schema(value, f"{where}.properties.{name}")
                                   for name, value in properties.items()}
    if "anyOf" in schema:
        options = schema["anyOf"]
        if not isinstance(options, list):
            raise bad_request(f"'{where}.anyOf' must be a list", f"{where}.anyOf", "invalid_type")
        converted["anyOf"] = [json_schema(option, f"{where}.anyOf[{i}]") for i, option in enumerate(options)]
    return converted
