"""The API's shared plumbing: how bodies are parsed and how lists are paged.

Wired in ``REST_FRAMEWORK`` (config/settings.py), so every view gets it without asking. (The
schema's side is config/schema.py: this module is imported while DRF's views load, and
drf-spectacular imports them.)
"""

from __future__ import annotations

import json
import re
import threading
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpResponse
from rest_framework import authentication, parsers
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

    def paginate_counted(self, rows, request) -> list:
        """``paginate_queryset`` for a query whose rows carry ``total_count`` (the whole query's
        count, a window function): the page and its count in one query. Only a page past the
        end is counted apart."""
        self.request = request
        self.limit = self.get_limit(request)
        self.offset = self.get_offset(request)
        page = list(rows[self.offset : self.offset + self.limit])
        if page:
            self.count = page[0]["total_count"]
        else:
            self.count = self.get_count(rows) if self.offset else 0
        return page

    def json_page_response(self, request, fetch) -> HttpResponse:
        """The paginated response for a page the database rendered as JSON text:
        ``fetch(limit, offset)`` gives (the count of all rows, the page's results as JSON text)."""
        self.request = request
        self.limit = self.get_limit(request)
        self.offset = self.get_offset(request)
        self.count, results = fetch(self.limit, self.offset)
        links = {"count": self.count, "next": self.get_next_link(), "previous": self.get_previous_link()}
        head = json.dumps(links, separators=(",", ":"))
        return HttpResponse(f'{head[:-1]},"results":{results}}}', content_type="application/json")

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


class CachedTokenAuthentication(authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>``, with what a key names remembered for
    ``API_TOKEN_CACHE_SECONDS`` in this process: a client's requests in a burst cost no token
    query (at 200 requests/s it was one query of three or four).

    The price: a deleted token, or a user made inactive or no longer staff, takes effect within
    that many seconds in each web process, not at once (0 turns the cache off). Only found keys
    are remembered; an unknown key is looked up every time. Each request gets its own User
    object, built from the remembered row, so no request sees another's changes to it.
    """

    _lock = threading.Lock()
    _found: dict[str, tuple[float, tuple, object]] = {}  # key -> (until, user row, token)
    MAX_KEYS = 10_000

    def authenticate_credentials(self, key):
        ttl = settings.API_TOKEN_CACHE_SECONDS
        if ttl <= 0:
            return super().authenticate_credentials(key)
        now = time.monotonic()
        entry = self._found.get(key)
        if entry is None or entry[0] <= now:
            user, token = super().authenticate_credentials(key)  # refuses unknown keys and inactive users
            fields = [f.attname for f in user._meta.concrete_fields]
            entry = (now + ttl, (fields, [getattr(user, name) for name in fields]), token)
            with self._lock:
                if len(self._found) >= self.MAX_KEYS:
                    self._found.clear()
                self._found[key] = entry
            return user, token
        fields, values = entry[1]
        return get_user_model().from_db("default", fields, values), entry[2]

    @classmethod
    def forget_all(cls) -> None:
        """Drop every remembered key (tests that revoke a token and expect it refused at once)."""
        with cls._lock:
            cls._found.clear()
