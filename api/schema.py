"""OpenAPI extensions: the Bearer API key scheme, and a hook that makes the schema as strict as
the validators (schemathesis checks both that valid requests pass and that invalid ones fail)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from recsys.ids import EXTERNAL_ID_PATTERN
from recsys.validation import CUSTOM_SPACE_PATTERN

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "item_id": {"type": "string", "pattern": EXTERNAL_ID_PATTERN},
    "user_id": {"type": "string", "pattern": EXTERNAL_ID_PATTERN},
    "space": {"type": "string", "pattern": CUSTOM_SPACE_PATTERN},
}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "api.authentication.ApiKeyAuthentication"
    name = "BearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key from `manage.py create_api_key`"}


def strict_schema(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular post-processing hook: id patterns on path parameters, and request bodies
    that refuse unknown fields (as recsys.validation does)."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] in PATH_PARAMETERS:
                    parameter["schema"] = dict(PATH_PARAMETERS[parameter["name"]])
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and component.get("type") == "object":
            component["additionalProperties"] = False
    return result
