"""The OpenAPI schema (drf-spectacular): the error envelope documented on every operation."""

from __future__ import annotations

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable and machine-readable, e.g. `not_found`.")
    message = serializers.CharField(help_text="Written for a person.")
    extra = serializers.DictField(help_text="Details that depend on the code, e.g. the invalid fields.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS = {
    "400": "The request is not valid (body, parameters or headers); `message` says what to change.",
    "401": "No credentials, or credentials that are not valid.",
    "403": "The credentials do not allow this.",
    "404": "No such object, or not one you may see.",
    "406": "None of the media types in Accept can be served.",
    "409": "The object's state does not allow this now.",
    "413": "The request body is larger than the limit.",
    "415": "The request body's media type is not accepted.",
    "429": "Too many requests at once; try again later.",
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, with the error envelope documented on every operation:
    400, 401, 403 and 406 everywhere, 404 where the path names an object, 413 and 415 where a
    body is read. A view adds others with ``@extend_schema(responses={...})``."""

    def _error_statuses(self) -> list[str]:
        statuses = ["400", "401", "403", "406"]
        if "{" in self.path:
            statuses.append("404")
        if self.method in ("POST", "PUT", "PATCH"):
            statuses += ["413", "415"]
        return statuses

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            if status not in responses:
                responses[status] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[status]),
                    status,
                    media_types=["application/json"],
                    direction=direction,
                )
        return responses


def error_response(status: int) -> OpenApiResponse:
    """For ``@extend_schema(responses={...})``: one more documented error status."""
    return OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[str(status)])


def any_value_stays_any(result, generator, request, public):
    """drf-spectacular (OpenAPI 3.1) writes a nullable JSON field as ``oneOf: [{}, {type: null}]``,
    which no value satisfies (null matches both). ``{}`` already allows null: keep just that."""

    def walk(node):
        if isinstance(node, dict):
            one_of = node.get("oneOf")
            if isinstance(one_of, list) and {} in one_of:
                del node["oneOf"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(result)
    return result
