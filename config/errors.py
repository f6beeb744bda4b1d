"""One error family for the whole product, and the API's rendering of it.

Every error a person can see has a stable machine-readable ``code`` and a message written for a
person. Everything under ``/api/`` that is not a success answers ``{"error": {"code", "message",
"extra"}}`` as JSON: the DRF handler renders the AppError family and DRF's own exceptions, and
``ApiEnvelopeMiddleware`` covers what never reaches a DRF view (unknown paths, a foreign Host, a
body over the size limit, a crash).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from django.conf import settings
from django.core.exceptions import DisallowedHost, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

log = structlog.get_logger(__name__)


class AppError(Exception):
    """A refusal or failure with a code people and programs can rely on."""

    status_code = 400
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra or {}


class ValidationFailed(AppError):
    code = "validation_error"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class RateLimited(AppError):
    """Too many requests of one kind from one person; the message says when to try again."""

    status_code = 429
    code = "rate_limited"


class TransientError(AppError):
    """An outside service failed in a way that may pass: timeouts, 5xx, rate limits. Retry."""

    status_code = 503
    code = "transient"


class PermanentError(AppError):
    """An outside service or configuration refused for good. Fail with this message."""

    code = "permanent"


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.ParseError: "parse_error",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "throttled",
    drf_exceptions.ValidationError: "validation_error",
}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    # Not at import time: DRF's views read our settings, which name this module's neighbours.
    from rest_framework.views import exception_handler

    request = context.get("request")
    if request is not None:
        # An error is JSON whatever the request negotiated (the schema's YAML, an event stream).
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
    if isinstance(exc, AppError):
        return Response(
            {"error": {"code": exc.code, "message": exc.message, "extra": exc.extra}},
            status=exc.status_code,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None  # not ours: Django answers 500 and ApiEnvelopeMiddleware renders it
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        message = "The request is not valid: " + _flatten(exc.detail)
        extra = {"fields": exc.detail}
    else:
        message = str(getattr(exc, "detail", exc))
        extra = {}
    response.data = {"error": {"code": code, "message": message, "extra": extra}}
    return response


def _flatten(detail: Any, prefix: str = "") -> str:
    if isinstance(detail, dict):
        return "; ".join(_flatten(v, f"{prefix}{k}: ") for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(v, prefix) for v in detail)
    return f"{prefix}{detail}"


# --- the envelope for what never reaches a DRF view ----------------------------------------
API_PREFIX = "/api/"
_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "server_error",
}


def envelope(
    status: int, *, code: str | None = None, message: str | None = None, extra: dict[str, Any] | None = None
) -> JsonResponse:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return JsonResponse(
        {
            "error": {
                "code": code or _STATUS_CODES.get(status, "error"),
                "message": message or f"{phrase}.",
                "extra": extra or {},
            }
        },
        status=status,
    )


class ApiEnvelopeMiddleware:
    """Under ``/api/`` every error is JSON in the envelope, even one no DRF view produced.

    First in MIDDLEWARE, so it sees what the others answer: Django's HTML pages for an unknown
    path (404), a foreign Host (400), a CSRF failure (403) or a crash (500) are replaced by the
    envelope. A body larger than DATA_UPLOAD_MAX_MEMORY_SIZE is refused before anything reads it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        try:
            request.get_host()
        except DisallowedHost:
            return envelope(400, code="disallowed_host", message="This host name is not served here.")
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not (length.isascii() and length.isdigit()):
            return envelope(400, message="The Content-Length header is not a number.")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and int(length) > limit:
            return envelope(
                413,
                code="payload_too_large",
                message=f"The request body is larger than the limit of {limit} bytes.",
                extra={"limit": limit},
            )
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
            log.info("api_error_enveloped", path=request.path_info, status=response.status_code)
            replaced = envelope(response.status_code)
            for header in ("Allow", "WWW-Authenticate", "Retry-After"):
                if header in response:
                    replaced[header] = response[header]
            return replaced
        return response
