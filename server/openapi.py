"""`fairness_strength` and `steering` in the OpenAPI schema of the completion routes (vLLM's lacks them)."""

from fastapi import FastAPI

STEERING_PROPERTIES = {
    "fairness_strength": {"type": "number", "minimum": 0, "title": "Fairness Strength",
                          "description": "Steering strength ω (0 = base model, 1 = the trained map), up to "
                                         "the server's maximum; omitted: the operator's default"},
    "steering": {"type": "string", "title": "Steering",
                 "description": "Adapter name (GET /v1/steerings); omitted: the server's default adapter"},
}


def document_steering(app: FastAPI) -> None:
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.get("components", {}).get("schemas", {})
        for path in ("/v1/completions", "/v1/chat/completions"):
            content = (schema.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
                       .get("content", {}).get("application/json", {}))
            refs = [content.get("schema", {})] + content.get("schema", {}).get("anyOf", [])
            for ref in refs:
                target = components.get(ref.get("$ref", "").rsplit("/", 1)[-1], {})
                target.setdefault("properties", {}).update(STEERING_PROPERTIES)
        return schema

    app.openapi = openapi
