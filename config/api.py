"""The API's shared plumbing: how bodies are parsed and how lists are paged.

Wired in ``REST_FRAMEWORK`` (config/settings.py), so every view gets it without asking. (The
schema's side is config/schema.py: this module is imported while DRF's views load, and
drf-spectacular imports them.)
"""

from __future__ import annotations

import re

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination

from config.errors import ValidationFailed

_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII digits only: "²".isdigit() is True, int("²") is not


def parse_whole_number(raw: str, *, name: str, minimum: int, maximum: int) -> int:
    """A query or header value as a bounded whole number, or a 400 naming the parameter."""
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not minimum <= value <= maximum:
        raise ValidationFailed(
            f"{name} must be a whole number from {minimum} to {maximum}.",
            code="bad_parameter",
            extra={"parameter": name, "minimum": minimum, "maximum": maximum},
        )
    return value


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; JSON nested too deeply for the decoder is a parse error, not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None


class Pagination(LimitOffsetPagination):
    """``?limit=&offset=`` with bounds: a value that is not a whole number in range is refused
    (400), never silently replaced by the default."""

    max_limit = 100  # default_limit is REST_FRAMEWORK's PAGE_SIZE
    max_offset = 2**31 - 1

    def get_limit(self, request) -> int:
        raw = request.query_params.get(self.limit_query_param)
        if raw is None:
            return self.default_limit
        return parse_whole_number(raw, name=self.limit_query_param, minimum=1, maximum=self.max_limit)

    def get_offset(self, request) -> int:
        raw = request.query_params.get(self.offset_query_param)
        if raw is None:
            return 0
        return parse_whole_number(raw, name=self.offset_query_param, minimum=0, maximum=self.max_offset)

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.limit_query_param,
                "required": False,
                "in": "query",
                "description": f"Number of results to return per page (default {self.default_limit}).",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit},
            },
            {
                "name": self.offset_query_param,
                "required": False,
                "in": "query",
                "description": "The initial index from which to return the results.",
                "schema": {"type": "integer", "minimum": 0, "maximum": self.max_offset},
            },
        ]

    def get_paginated_response_schema(self, schema):
        link = {"type": ["string", "null"], "format": "uri"}
        return {
            "type": "object",
            "required": ["count", "next", "previous", "results"],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "next": link,
                "previous": link,
                "results": schema,
            },
        }
