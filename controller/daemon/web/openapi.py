"""The OpenAPI 3.1 document of /metrics and /api/v1 (served at /api/v1/openapi.json).

Written by hand for the paths, parameters and errors; the node and event
schemas are the pydantic models' own JSON Schemas (2020-12, which OpenAPI 3.1
uses), so the document cannot drift from what the API sends.
"""

from __future__ import annotations

from typing import Any

from controller import __version__
from controller.core.ids import MAC_JSON_PATTERN
from controller.core.since import SINCE_FORMS
from controller.daemon.journal import TYPE_ALLOWED
from controller.daemon.web.fleet import FINISHED
from controller.daemon.web.params import EVENTS_LIMIT, EVENTS_LIMIT_MAX
from controller.events.envelope import Envelope
from controller.events.fleet import STATE_ORDER
from controller.events.node_events import NodeState

API = "/api/v1"
_REF = "#/components/schemas/{model}"
_NULLABLE_STR = {"type": ["string", "null"]}
_ERRORS = {
    "400": ("BadRequest", "a malformed parameter; the message names it and what is allowed"),
    "401": ("Unauthorized", "http.token_file is set and the bearer token is missing or wrong"),
    "404": ("NotFound", "no such label or node"),
    "503": ("Busy", "the server's bound on open event streams is reached"),
}


def _schemas() -> dict[str, Any]:
    """Components: the node record, the event envelope and the models they refer to."""
    schemas: dict[str, Any] = {}
    node = NodeState.model_json_schema(ref_template=_REF, mode="serialization")
    envelope = Envelope.model_json_schema(ref_template=_REF, mode="serialization")
    # Optional envelope attributes are left out, never null: no default to show.
    for prop in envelope["properties"].values():
        if prop.get("default", "") is None:
            del prop["default"]
    for schema in (node, envelope):
        schemas.update(schema.pop("$defs", {}))
    node["title"] = "NodeRecord"
    node["description"] = "a node as `netroot nodes --json` prints it"
    node["properties"]["boot_duration_s"] = {
        "type": ["number", "null"],
        "description": "boot_timing.total_s rounded to 0.1 s; null when not reported",
    }
    node["required"] = sorted(node["properties"])  # model_dump writes every field
    schemas["NodeRecord"] = node
    schemas["Envelope"] = envelope
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    }
    schemas["Label"] = _label_row()
    return schemas


def _label_row() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["label", "active", "versions_kept", "last_build"],
        "properties": {
            "label": {"type": "string"},
            "active": _NULLABLE_STR,
            "versions_kept": {"type": "integer"},
            "last_build": {
                "type": ["object", "null"],
                "properties": {
                    "build_id": {"type": "string"},
                    "result": {"type": "string", "enum": list(FINISHED)},
                    "version": _NULLABLE_STR,
                    "error": _NULLABLE_STR,
                    "finished_at": {**_NULLABLE_STR, "format": "date-time"},
                },
            },
        },
    }


def _get(
    summary: str, schema: dict[str, Any], *errors: str, params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
    }
    for status in ("401", *errors):
        responses[status] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        operation["parameters"] = params
    return {"get": operation}


def _param(name: str, where: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": where, "description": description}
    param["schema"] = schema
    if where == "path":
        param["required"] = True
    return param


def _array(ref: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}}


def _label_param(what: str) -> dict[str, Any]:
    return _param("label", "query", f"only the {what} of this label", {"type": "string"})


def openapi_document() -> dict[str, Any]:
    """The document: every route of daemon.web.api under /metrics and /api/v1."""
    states = ", ".join(STATE_ORDER)
    node_params = [
        _label_param("nodes"),
        _param(
            "state",
            "query",
            f"only nodes in these states (repeat it or separate by commas; any of: {states})",
            {"type": "array", "items": {"type": "string", "enum": list(STATE_ORDER)}},
        ),
        _param("stale", "query", "1: only stale nodes (adds state=stale)", {"type": "string"}),
    ]
    node_params[1]["explode"] = True
    event_params = [
        {**_param("since", "query", SINCE_FORMS, {"type": "string"}), "required": True},
        _param("type", "query", TYPE_ALLOWED, {"type": "string"}),
        _label_param("events"),
        _param(
            "limit",
            "query",
            "at most this many events, the oldest first",
            {"type": "integer", "minimum": 1, "maximum": EVENTS_LIMIT_MAX, "default": EVENTS_LIMIT},
        ),
    ]
    mac = {"type": "string", "pattern": MAC_JSON_PATTERN}
    return {
        "openapi": "3.1.0",
        "info": {"title": "netroot fleet view", "version": __version__},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                name: {
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for name, description in _ERRORS.values()
            },
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
                }
            },
            f"{API}/labels": _get("every configured label", _array("Label")),
            f"{API}/labels/{{label}}/versions": _get(
                "a label's versions, oldest first, as `netroot versions LABEL --json`",
                {"type": "array", "items": {"type": "object"}},
                "404",
                params=[_param("label", "path", "a configured label", {"type": "string"})],
            ),
            f"{API}/labels/{{label}}/versions/{{version}}/files/{{rel}}": {
                "get": {
                    "summary": "one file of a committed version, for replica boot servers: "
                    "manifest.json, files.idx, boot/<name> or rootfs/<path> (a regular file "
                    "reached through directories only; its mtime in X-Netroot-Mtime-Ns)",
                    "parameters": [
                        _param("label", "path", "a configured label", {"type": "string"}),
                        _param("version", "path", "a committed version id", {"type": "string"}),
                        _param(
                            "rel", "path", "the file, relative to the version", {"type": "string"}
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "the file's bytes",
                            "content": {"application/octet-stream": {}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                    },
                }
            },
            f"{API}/nodes": _get(
                "the nodes, as `netroot nodes --json`: by label, problems first, then MAC",
                _array("NodeRecord"),
                "400",
                params=node_params,
            ),
            f"{API}/nodes/{{mac}}": _get(
                "one node, as an object of `netroot nodes --json`",
                {"$ref": "#/components/schemas/NodeRecord"},
                "400",
                "404",
                params=[_param("mac", "path", "the node's MAC (any case)", mac)],
            ),
            f"{API}/events": _get(
                "the event journal since a time, in publication order (the envelopes as published)",
                _array("Envelope"),
                "400",
                params=event_params,
            ),
            f"{API}/stream": {
                "get": {
                    "summary": "the event journal as server-sent events, from now or after a seq",
                    "parameters": [
                        _param(
                            "after", "query", "start after this journal seq", {"type": "integer"}
                        ),
                        _param(
                            "Last-Event-ID", "header", "resume after this seq", {"type": "integer"}
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "`id:` the journal seq, `data:` the envelope",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": {"$ref": "#/components/responses/BadRequest"},
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "503": {"$ref": "#/components/responses/Busy"},
                    },
                }
            },
            f"{API}/rollouts": _get(
                "canary rollouts in progress and each label's last one, as `netroot status "
                "--json`'s rollouts: the rollout (canaries, phase, failure) and `passed`",
                {"type": "array", "items": {"type": "object"}},
            ),
            f"{API}/openapi.json": _get("this document", {"type": "object"}),
        },
    }
